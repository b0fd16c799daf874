#!/usr/bin/env bash
# Builds the repository's Dockerfile, unchanged, with podman (no Docker engine needed) where its base images
# cannot be pulled: stand-ins with the same names are made locally first.
#   docker.io/library/rust:1.95-bookworm   Debian bookworm (debootstrap) + gcc + this machine's Rust toolchain,
#                                          laid out like the official image (RUSTUP_HOME, CARGO_HOME, PATH)
#   gcr.io/distroless/cc-debian12:nonroot  glibc, libgcc_s, CA certificates, /etc/passwd with nonroot 65532
# Both trust this machine's CA bundle (the build downloads crates). With the local node up (up.sh), the image is
# also imported into its containerd as localhost/tandem:dockerfile; then
#   E2E_IMAGE=localhost/tandem:dockerfile ... cargo nextest run --test e2e     (see tests/e2e/README.md)
set -euo pipefail

source "$(dirname "$0")/env.sh"
TOOLCHAIN="$(rustc --print sysroot)"
command -v podman >/dev/null || apt-get install -y -qq podman >/dev/null
mkdir -p "$IMAGES"

if ! podman image exists docker.io/library/rust:1.95-bookworm; then
  rust="$IMAGES/rust-rootfs"
  if [ ! -x "$rust/usr/bin/gcc" ]; then
    rm -rf "$rust"
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,pkg-config,make bookworm "$rust" \
      http://deb.debian.org/debian
    rm -rf "$rust"/var/cache/apt/archives/*.deb
  fi
  mkdir -p "$rust/usr/local/rustup/toolchains" "$rust/usr/local/cargo/bin"
  rm -rf "$rust/usr/local/rustup/toolchains/stable"
  cp -a "$TOOLCHAIN" "$rust/usr/local/rustup/toolchains/stable"
  cp -L /etc/ssl/certs/ca-certificates.crt "$rust/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rust" -c . | podman import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchains/stable/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - docker.io/library/rust:1.95-bookworm
fi

if ! podman image exists gcr.io/distroless/cc-debian12:nonroot; then
  base="$IMAGES/distroless-rootfs"
  rm -rf "$base" && mkdir -p "$base"/{etc/ssl/certs,tmp,home/nonroot}
  for lib in /lib/x86_64-linux-gnu/{libc.so.6,libm.so.6,libgcc_s.so.1,libdl.so.2,libpthread.so.0,librt.so.1} \
    /lib64/ld-linux-x86-64.so.2; do
    install -D "$(readlink -f "$lib")" "$base$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$base/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$base/etc/group"
  chmod 1777 "$base/tmp"
  tar -C "$base" -c . | podman import --change 'USER 65532:65532' - gcr.io/distroless/cc-debian12:nonroot
fi

podman build -t localhost/tandem:dockerfile "$REPO"
podman image inspect localhost/tandem:dockerfile --format 'built: {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}'
if [ -S "$STATE/containerd.sock" ]; then
  podman save --format oci-archive -o "$IMAGES/tandem-dockerfile.tar" localhost/tandem:dockerfile
  ctr --address "$STATE/containerd.sock" -n k8s.io images import --no-unpack "$IMAGES/tandem-dockerfile.tar" >/dev/null
  echo "imported into the local node as localhost/tandem:dockerfile"
fi
