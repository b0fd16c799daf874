# Sourced by the local-node scripts: where things are. Each location can be overridden from the environment.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
STATE="${TANDEM_NODE_DIR:-/tmp/tandem-node}"           # the running node: logs, pids, sockets, kubeconfig
KUBE_BIN="${TANDEM_KUBE_BIN:-$HOME/.cache/tandem-kube/bin}"  # scripts/kube-control-plane.sh installs here
IMAGES="${TANDEM_NODE_IMAGES:-$HOME/.cache/tandem-kube/images}"  # root filesystems and image archives
