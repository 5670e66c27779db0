#!/usr/bin/env bash
# The end-to-end tests in a local kind cluster: creates the cluster of kind-config.yaml
# (or reuses it), builds both images with the Dockerfile and loads them into it, starts
# a broker the cluster's pods can reach, then runs scripts/e2e.sh with those images.
# Needs a Docker engine and kind (>= v0.30.0): it cannot run on machines without one.
# The cluster and the broker are left running; remove them with
#   kind delete cluster --name tributary
#   TRIBUTARY_RUN_DIR=.run/kind scripts/broker.sh stop
#
# Usage: scripts/kind-e2e.sh [args for scripts/e2e.sh]

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TRIBUTARY_ROOT"

cluster=tributary # kind-config.yaml's name
tag=e2e
command -v kind >/dev/null 2>&1 || die "kind not found (https://kind.sigs.k8s.io, v0.30.0 or later)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info); kind runs Kubernetes in Docker"

if [[ " $(kind get clusters 2>/dev/null | tr '\n' ' ') " != *" $cluster "* ]]; then
  kind create cluster --config kind-config.yaml
fi
# A kubeconfig of its own, so e2e.sh cannot pick whatever cluster is current.
mkdir -p .run/kind
kind get kubeconfig --name "$cluster" >.run/kind/kubeconfig
export KUBECONFIG="$TRIBUTARY_ROOT/.run/kind/kubeconfig"

for target in operator relay; do
  docker build --target "$target" -t "tributary-$target:$tag" .
  kind load docker-image --name "$cluster" "tributary-$target:$tag"
done

# Pods reach the host at the kind network's IPv4 gateway; the broker listens there.
gateways="$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}')"
gateway=""
for address in $gateways; do
  if [[ $address == *.*.*.* ]]; then gateway=$address && break; fi
done
[[ -n $gateway ]] || die "no IPv4 gateway on docker network kind (got: $gateways)"
eval "$(TRIBUTARY_RUN_DIR=.run/kind TRIBUTARY_BROKER_HOST="$gateway" bash scripts/broker.sh start --env)"

export TRIBUTARY_E2E_BOOTSTRAP_SERVERS="$TRIBUTARY_BOOTSTRAP_SERVERS"
export TRIBUTARY_E2E_IMAGE_REPOSITORY=tributary-operator TRIBUTARY_E2E_IMAGE_TAG=$tag
export TRIBUTARY_E2E_RELAY_IMAGE_REPOSITORY=tributary-relay TRIBUTARY_E2E_RELAY_IMAGE_TAG=$tag
exec bash scripts/e2e.sh "$@"
