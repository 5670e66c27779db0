#!/usr/bin/env bash
# THE test command: sets up everything the test suite talks to, then runs it.
#   1. build deps for librdkafka (gcc, g++, make, zlib headers) and shellcheck (apt only if missing)
#   2. pinned tansu/kubectl/helm            (scripts/tools.sh)
#   3. PostgreSQL at 127.0.0.1:5432         (scripts/postgres.sh)
#   4. a tansu broker of the tests' own      (scripts/broker.sh in a fresh <repo>/.run/test.*
#      on a free port; stopped on exit. The demo's broker in <repo>/.run is never touched.)
#   5. a TLS-only PostgreSQL with a CA of its own (scripts/postgres-tls.sh, same dir, free port;
#      stopped on exit)
#   6. cargo test --workspace --all-targets --locked [your args]; the e2e crate only when a
#      Kubernetes cluster answers (else one line starting with SKIP)
#
# Usage: scripts/test.sh [cargo test args]    e.g. scripts/test.sh -p tributary-api
#                                                  scripts/test.sh -- --nocapture
# Exits with cargo's exit status.
#
# Exported to the tests:
#   TRIBUTARY_TANSU, TRIBUTARY_KUBECTL, TRIBUTARY_HELM   absolute tool paths
#   TRIBUTARY_BOOTSTRAP_SERVERS   127.0.0.1:<port> of the tansu broker
#   TRIBUTARY_RUN_DIR, TRIBUTARY_BROKER_CTL   broker state dir / scripts/broker.sh, so a
#                                 test can run "$TRIBUTARY_BROKER_CTL restart" (same port)
#   TRIBUTARY_TEST_DATABASE_URL   postgres://postgres@127.0.0.1:5432/postgres
#   TRIBUTARY_TEST_TLS_DATABASE_URL, TRIBUTARY_TEST_TLS_DIR   the TLS-only PostgreSQL and its
#                                 certificates (see scripts/postgres-tls.sh)
#   TRIBUTARY_TEST_STRICT=1       tests needing a broker/tool must fail, not skip
#   TRIBUTARY_E2E_REQUIRED=1      an e2e test that finds no cluster fails

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TRIBUTARY_ROOT"

ensure_build_deps
# operator/tests/scripts.rs runs shellcheck on scripts/ (and fails without it in strict mode).
if command -v dpkg >/dev/null 2>&1; then apt_install_missing shellcheck; fi

eval "$(bash scripts/tools.sh --env)"
# Tests that shell out to plain `kubectl`/`helm`/`tansu` get the pinned ones too.
PATH="$(dirname "$TRIBUTARY_KUBECTL"):$PATH"
export PATH

eval "$(bash scripts/postgres.sh --env)"

# A broker of the tests' own: tests restart it (wiping every topic) and leave their
# it.* topics behind, so they must not share the demo's (<repo>/.run).
mkdir -p .run
TRIBUTARY_RUN_DIR="$(mktemp -d "$TRIBUTARY_ROOT/.run/test.XXXXXX")"
export TRIBUTARY_RUN_DIR
unset TRIBUTARY_BROKER_PORT TRIBUTARY_BROKER_HOST # the demo's settings, if any
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local status=$?
  bash scripts/broker.sh stop || true
  bash scripts/postgres-tls.sh stop || true
  if [[ $status -eq 0 ]]; then
    rm -rf "$TRIBUTARY_RUN_DIR"
  else
    log "broker and PostgreSQL (TLS) logs kept: $TRIBUTARY_RUN_DIR/broker.log, $TRIBUTARY_RUN_DIR/postgres-tls/postgres.log"
  fi
}
trap cleanup EXIT
# Make Ctrl-C / kill run the EXIT trap too.
trap 'exit 130' INT
trap 'exit 143' TERM
eval "$(bash scripts/broker.sh start --env)"
eval "$(bash scripts/postgres-tls.sh start --env)"

export TRIBUTARY_TEST_STRICT=1 TRIBUTARY_E2E_REQUIRED=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# Build the cargo command line. --workspace would override a -p the caller
# passes (cargo ignores -p then), and --all-targets would widen a --test/--lib
# selection (and cannot be mixed with --doc), so each is only added when the
# caller did not select packages/targets themselves.
workspace=true
all_targets=true
for arg in "$@"; do
  [[ $arg == -- ]] && break
  case $arg in
    -p | -p* | --package | --package=* | --manifest-path | --manifest-path=*) workspace=false ;;
    --lib | --bin | --bin=* | --bins | --test | --test=* | --tests | --bench | --bench=* | --benches | \
      --example | --example=* | --examples | --doc | --all-targets) all_targets=false ;;
  esac
done
cargo_args=(test --no-fail-fast)
if $workspace; then
  cargo_args+=(--workspace)
  # e2e tests that find no cluster must not count as passed: leave the crate out.
  if no_cluster="$(why_no_cluster)"; then
    echo "SKIP e2e: $no_cluster (scripts/kind-e2e.sh makes one)"
    cargo_args+=(--exclude tributary-e2e)
  fi
fi
if $all_targets; then cargo_args+=(--all-targets); fi
# --locked keeps CI honest about Cargo.lock; without a lock file it cannot apply.
if [[ -f Cargo.lock ]]; then cargo_args+=(--locked); fi
cargo_args+=("$@")

log "broker $TRIBUTARY_BOOTSTRAP_SERVERS, database $TRIBUTARY_TEST_DATABASE_URL, TLS database $TRIBUTARY_TEST_TLS_DATABASE_URL, strict mode"
log "running: cargo ${cargo_args[*]}"
set +e
cargo "${cargo_args[@]}"
status=$?
set -e
exit "$status"
