#!/usr/bin/env bash
# Builds a real Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl;
# etcd from Debian) for tests/python/test_real_apiserver.py and the one-node cluster of tests/e2e/local-node, on a machine with no cluster, no Docker engine and no access to dl.k8s.io:
# everything comes from Debian's archive. The source is Debian bookworm's `kubernetes` source package (Kubernetes
# 1.20.2 with its vendor/ tree), built with Debian's Go 1.19.
#
#   scripts/kube-control-plane.sh            # installs into ~/.cache/tandem-kube/bin (or $TANDEM_KUBE_BIN)
#
# The test looks there and skips with a message when the binaries are missing. Takes ~10 minutes on 2 cores.
set -euo pipefail

BIN="${TANDEM_KUBE_BIN:-$HOME/.cache/tandem-kube/bin}"
WORK="${TANDEM_KUBE_SRC:-$HOME/.cache/tandem-kube/src}"
mkdir -p "$BIN" "$WORK"

TOOLS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
built=1
for t in $TOOLS etcd; do [ -x "$BIN/$t" ] || built=0; done
if [ "$built" = 1 ]; then
  echo "already built: $BIN"
  exit 0
fi

# Debian's source index is needed for `apt-get source`.
if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    > /etc/apt/sources.list.d/tandem-deb-src.list
  apt-get update -qq
fi
# golang-go is Go 1.19; reflect2 1.0.2 replaces the vendored 1.0.1, which crashes with Go >= 1.18.
apt-get install -y -qq golang-go golang-github-modern-go-reflect2-dev etcd-server >/dev/null

cd "$WORK"
if [ ! -d kubernetes-1.20.2 ]; then
  apt-get source --download-only kubernetes
  tar xzf kubernetes_*.orig.tar.gz
fi
cd kubernetes-1.20.2
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$WORK/home" GOCACHE="$WORK/gocache" \
  make WHAT="$(for t in $TOOLS; do printf 'cmd/%s ' "$t"; done)"

for t in $TOOLS; do install -m 0755 "_output/bin/$t" "$BIN/"; done
ln -sfn "$(command -v etcd)" "$BIN/etcd"
echo "installed into $BIN"
