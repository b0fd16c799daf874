#!/usr/bin/env bash
# A one-node Kubernetes cluster from local processes, for machines with no Docker engine (so no kind or k3d):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (Kubernetes 1.20.2 built
# by scripts/kube-control-plane.sh), containerd + runc + the CNI bridge plugin from Debian, and cluster DNS from
# cluster_dns.py. Images are packed from local root filesystems with oci_image.py and imported into containerd:
#   tandem:e2e       the tandem binary ($TANDEM_BIN, default the release build) on glibc, like the Dockerfile's
#                    distroless image, user 65532
#   python:3-slim    Debian bookworm minbase + python3 (debootstrap), for config/samples' apps
#   tandem.local/pause:1   busybox-static sleeping, the pod sandbox
# Then the e2e suite runs against it:
#   tests/e2e/local-node/up.sh
#   KUBECONFIG=/tmp/tandem-node/admin.kubeconfig E2E_IMAGE=tandem:e2e E2E_REQUIRE_CLUSTER=1 \
#     cargo nextest run --test e2e --no-capture
#   tests/e2e/local-node/down.sh
# Needs root. Debian packages: containerd runc containernetworking-plugins iptables conntrack busybox-static
# debootstrap (installed when missing).
set -euo pipefail

source "$(dirname "$0")/env.sh"
TANDEM_BIN="${TANDEM_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/tandem}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
POD_CIDR=10.244.0.0/24
GATEWAY=10.244.0.1
NODE=tandem-node
NODE_IP="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)"
[ -n "$NODE_IP" ] || { echo "no non-loopback IPv4 address for the node" >&2; exit 1; }

for t in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd; do
  [ -x "$KUBE_BIN/$t" ] || { echo "$KUBE_BIN/$t missing: run scripts/kube-control-plane.sh" >&2; exit 1; }
done
[ -x "$TANDEM_BIN" ] || { echo "$TANDEM_BIN missing: cargo build --release (or set TANDEM_BIN)" >&2; exit 1; }
missing=()
for c in containerd runc iptables conntrack busybox debootstrap; do command -v "$c" >/dev/null || missing+=("$c"); done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs="${missing[*]}"; pkgs="${pkgs//busybox/busybox-static}"
  apt-get install -y -qq $pkgs >/dev/null
fi

mkdir -p "$STATE"/{pki,certs,cni,logs,kubelet} "$IMAGES"
cd "$STATE"
log() { echo "local-node: $*"; }
start() { # name, command...: runs in the background, output in logs/<name>.log, pid in <name>.pid
  local name=$1; shift
  nohup "$@" >"logs/$name.log" 2>&1 &
  echo $! >"$name.pid"
}
api_ready() { curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  "https://127.0.0.1:6443/readyz" | grep -q 200; }

# --- credentials -------------------------------------------------------------------------------------------
[ -f pki/sa.key ] || { openssl genrsa -out pki/sa.key 2048 2>/dev/null; openssl rsa -in pki/sa.key -pubout -out pki/sa.pub 2>/dev/null; }
[ -f pki/token ] || head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >pki/token
TOKEN="$(cat pki/token)"
echo "$TOKEN,admin,admin,system:masters" >pki/tokens.csv
cat >admin.kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: tandem-local, context: {cluster: local, user: admin}}]
current-context: tandem-local
EOF

# --- control plane -----------------------------------------------------------------------------------------
log "etcd, kube-apiserver"
start etcd "$KUBE_BIN/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
start kube-apiserver "$KUBE_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --secure-port=6443 \
  --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --cert-dir="$STATE/certs" --insecure-port=0 \
  --token-auth-file="$STATE/pki/tokens.csv" --authorization-mode=Node,RBAC \
  --service-account-key-file="$STATE/pki/sa.pub" --service-account-signing-key-file="$STATE/pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/16 \
  --allow-privileged=true --kubelet-preferred-address-types=InternalIP
for _ in $(seq 1 120); do api_ready && break; sleep 0.5; done
api_ready || { echo "kube-apiserver did not become ready; see $STATE/logs/kube-apiserver.log" >&2; exit 1; }
log "kube-controller-manager, kube-scheduler"
start kube-controller-manager "$KUBE_BIN/kube-controller-manager" --kubeconfig="$STATE/admin.kubeconfig" \
  --leader-elect=false --service-account-private-key-file="$STATE/pki/sa.key" \
  --root-ca-file="$STATE/certs/apiserver.crt" --use-service-account-credentials=false --port=0 --secure-port=0
start kube-scheduler "$KUBE_BIN/kube-scheduler" --kubeconfig="$STATE/admin.kubeconfig" --leader-elect=false \
  --port=0 --secure-port=0

# --- node: network, containerd, images, kubelet, kube-proxy, DNS -------------------------------------------
log "network ($POD_CIDR on cni0), containerd"
echo 1 >/proc/sys/net/ipv4/ip_forward
modprobe br_netfilter 2>/dev/null || true
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
ip link show cni0 >/dev/null 2>&1 || { ip link add cni0 type bridge; ip addr add "$GATEWAY/24" dev cni0; }
ip link set cni0 up
cat >cni/10-bridge.conflist <<EOF
{"cniVersion": "0.4.0", "name": "tandem-local", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
cat >containerd.toml <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tandem.local/pause:1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$HERE/runc-wrapper.sh"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
EOF
start containerd containerd --config "$STATE/containerd.toml"
for _ in $(seq 1 50); do [ -S containerd.sock ] && break; sleep 0.2; done
ctr() { command ctr --address "$STATE/containerd.sock" -n k8s.io "$@"; }

log "images"
make_image() { # name, archive, rootfs, oci_image.py options...
  local name=$1 archive=$2 rootfs=$3; shift 3
  "$PYTHON" "$HERE/oci_image.py" "$rootfs" "$archive" "$name" "$@"
  ctr images import --no-unpack "$archive" >/dev/null
}
pause="$IMAGES/pause"
rm -rf "$pause" && mkdir -p "$pause/bin" && cp "$(command -v busybox)" "$pause/bin/busybox"
make_image tandem.local/pause:1 "$IMAGES/pause.tar" "$pause" --entrypoint '["/bin/busybox","sleep","2147483647"]'
tandem_root="$IMAGES/tandem"
rm -rf "$tandem_root" && mkdir -p "$tandem_root"/{usr/local/bin,lib/x86_64-linux-gnu,lib64,etc/ssl/certs,tmp}
install -m 0755 "$TANDEM_BIN" "$tandem_root/usr/local/bin/tandem"
for lib in $(ldd "$TANDEM_BIN" | grep -o '/lib[^ ]*'); do cp -L "$lib" "$tandem_root$lib"; done
cp -L /etc/ssl/certs/ca-certificates.crt "$tandem_root/etc/ssl/certs/" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$tandem_root/etc/passwd"
chmod 1777 "$tandem_root/tmp"
make_image docker.io/library/tandem:e2e "$IMAGES/tandem.tar" "$tandem_root" \
  --entrypoint '["/usr/local/bin/tandem"]' --user 65532:65532
if [ ! -x "$IMAGES/python-rootfs/usr/bin/python" ]; then
  log "debootstrap bookworm + python3 (once; minutes)"
  rm -rf "$IMAGES/python-rootfs"
  debootstrap --variant=minbase --include=python3,python-is-python3 bookworm "$IMAGES/python-rootfs" \
    http://deb.debian.org/debian >"$STATE/logs/debootstrap.log"
  rm -rf "$IMAGES/python-rootfs"/var/cache/apt/archives/*.deb
fi
[ -f "$IMAGES/python.tar" ] || make_image docker.io/library/python:3-slim "$IMAGES/python.tar" "$IMAGES/python-rootfs" \
  --cmd '["python3"]'
ctr images import --no-unpack "$IMAGES/python.tar" >/dev/null

log "cluster DNS on $GATEWAY:53, kubelet, kube-proxy"
start cluster-dns "$PYTHON" "$HERE/cluster_dns.py" --listen "$GATEWAY" --server https://127.0.0.1:6443 --token "$TOKEN"
start kubelet "$KUBE_BIN/kubelet" --kubeconfig="$STATE/admin.kubeconfig" --hostname-override="$NODE" \
  --node-ip="$NODE_IP" --container-runtime=remote --container-runtime-endpoint="unix://$STATE/containerd.sock" \
  --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" --fail-swap-on=false --cgroup-driver=cgroupfs \
  --cgroups-per-qos=false --enforce-node-allocatable= --cluster-dns="$GATEWAY" --cluster-domain=cluster.local \
  --resolv-conf=/etc/resolv.conf --read-only-port=0 --anonymous-auth=true --authorization-mode=AlwaysAllow \
  --eviction-hard='memory.available<10Mi' --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --serialize-image-pulls=false
start kube-proxy "$KUBE_BIN/kube-proxy" --kubeconfig="$STATE/admin.kubeconfig" --hostname-override="$NODE" \
  --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 --metrics-bind-address=127.0.0.1:10249

export KUBECONFIG="$STATE/admin.kubeconfig"
for _ in $(seq 1 120); do
  [ "$("$KUBE_BIN/kubectl" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  sleep 1
done
"$KUBE_BIN/kubectl" get node -o wide
log "ready: export KUBECONFIG=$STATE/admin.kubeconfig"
