#!/usr/bin/env bash
# End-to-end tests against a real cluster (e.g. `kind create cluster --config kind-config.yaml`):
# installs the chart, then runs the tributary-e2e test crate.
# Without a reachable cluster it prints one line starting with SKIP and exits 0, so
# it is safe to call unconditionally. scripts/kind-e2e.sh makes a kind cluster and runs this.
#
# Usage: scripts/e2e.sh [test name filter / libtest args]
# Env:   KUBECONFIG                       cluster to use (kubectl's default otherwise)
#        TRIBUTARY_E2E_BOOTSTRAP_SERVERS  Kafka address as seen from inside the cluster
#                                         (falls back to TRIBUTARY_BOOTSTRAP_SERVERS)
#        TRIBUTARY_E2E_IMAGE_REPOSITORY, TRIBUTARY_E2E_IMAGE_TAG
#                                         operator image to deploy (e.g. one `kind load`ed)
#        TRIBUTARY_E2E_RELAY_IMAGE_REPOSITORY, TRIBUTARY_E2E_RELAY_IMAGE_TAG
#                                         tributary-relay image the operator runs in workloads
#        TRIBUTARY_E2E_NAMESPACE          release namespace (tributary-system)
# Exports to the tests: TRIBUTARY_KUBECTL, TRIBUTARY_HELM, TRIBUTARY_TANSU,
#        TRIBUTARY_E2E_NAMESPACE, TRIBUTARY_E2E_BOOTSTRAP_SERVERS, TRIBUTARY_TEST_STRICT=1,
#        TRIBUTARY_E2E_REQUIRED=1 (a test that finds no cluster fails)

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TRIBUTARY_ROOT"

eval "$(bash scripts/tools.sh --env)"

if no_cluster="$(why_no_cluster)"; then
  echo "SKIP e2e: $no_cluster"
  exit 0
fi

bootstrap="${TRIBUTARY_E2E_BOOTSTRAP_SERVERS:-${TRIBUTARY_BOOTSTRAP_SERVERS:-}}"
[[ -n $bootstrap ]] ||
  die "set TRIBUTARY_E2E_BOOTSTRAP_SERVERS to a Kafka address reachable from inside the cluster"
namespace="${TRIBUTARY_E2E_NAMESPACE:-tributary-system}"
export TRIBUTARY_E2E_BOOTSTRAP_SERVERS="$bootstrap" TRIBUTARY_E2E_NAMESPACE="$namespace"

log "cluster: $("$TRIBUTARY_KUBECTL" config current-context 2>/dev/null || echo '?'); installing chart into $namespace"
helm_args=(
  upgrade --install tributary charts/tributary
  --namespace "$namespace" --create-namespace
  # helm --set splits on commas; the chart documents escaping them.
  --set "kafka.bootstrapServers=${bootstrap//,/\\,}"
  --wait --timeout 5m
)
if [[ -n ${TRIBUTARY_E2E_IMAGE_REPOSITORY:-} ]]; then
  helm_args+=(--set "image.repository=$TRIBUTARY_E2E_IMAGE_REPOSITORY")
fi
if [[ -n ${TRIBUTARY_E2E_IMAGE_TAG:-} ]]; then
  helm_args+=(--set "image.tag=$TRIBUTARY_E2E_IMAGE_TAG")
fi
if [[ -n ${TRIBUTARY_E2E_RELAY_IMAGE_REPOSITORY:-} ]]; then
  helm_args+=(--set "relayImage.repository=$TRIBUTARY_E2E_RELAY_IMAGE_REPOSITORY")
fi
if [[ -n ${TRIBUTARY_E2E_RELAY_IMAGE_TAG:-} ]]; then
  helm_args+=(--set "relayImage.tag=$TRIBUTARY_E2E_RELAY_IMAGE_TAG")
fi
"$TRIBUTARY_HELM" "${helm_args[@]}"

ensure_build_deps
export TRIBUTARY_TEST_STRICT=1 TRIBUTARY_E2E_REQUIRED=1
PATH="$(dirname "$TRIBUTARY_KUBECTL"):$PATH"
export PATH
locked=()
if [[ -f Cargo.lock ]]; then locked=(--locked); fi
exec cargo test "${locked[@]}" -p tributary-e2e -- --nocapture "$@"
