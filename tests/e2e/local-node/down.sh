#!/usr/bin/env bash
# Stops what up.sh started (in reverse order) and removes its state: containers, cni0, iptables rules of
# kube-proxy and the CNI, and $TANDEM_NODE_DIR.
set -uo pipefail
source "$(dirname "$0")/env.sh"
cd "$STATE" 2>/dev/null || exit 0
for name in kube-proxy kubelet cluster-dns; do
  [ -f "$name.pid" ] && kill "$(cat "$name.pid")" 2>/dev/null
done
sleep 1
if [ -S containerd.sock ]; then
  for c in $(ctr --address "$STATE/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$STATE/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$c" 2>/dev/null
  done
  sleep 1
fi
for name in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
  [ -f "$name.pid" ] && kill "$(cat "$name.pid")" 2>/dev/null
done
sleep 2
pkill -f "containerd-shim-runc-v2 -namespace k8s.io" 2>/dev/null
"$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1
ip link del cni0 2>/dev/null
grep -o "$STATE/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
cd / && rm -rf "$STATE"
echo "local-node: stopped and removed $STATE"
