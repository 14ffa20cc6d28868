# Pinned versions of the local control plane. Change KUBE_VERSION to move every
# Kubernetes component (and the v0.x staging modules) at once.
KUBE_VERSION="${KUBE_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.7.0}"
HELM_VERSION="${HELM_VERSION:-3.19.0}"

# Where built binaries and the running cluster's state live. Outside the checkout so that
# a fresh clone on the same machine reuses them.
SLIPWAY_CACHE="${SLIPWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipway}"
TESTENV_BIN="$SLIPWAY_CACHE/testenv/bin/k8s-v$KUBE_VERSION-etcd-v$ETCD_VERSION-kwok-v$KWOK_VERSION-helm-v$HELM_VERSION"
TESTENV_STATE="${TESTENV_STATE:-$SLIPWAY_CACHE/testenv/run}"
