#!/usr/bin/env bash
# The demo: start a local Kafka-protocol broker (tansu), apply the example
# resources in examples/ to it with the operator's one-shot `apply` mode (no
# Kubernetes needed), then list the topics that now exist.
# The broker is left running so you can look around; stop it with
#   scripts/broker.sh stop
#
# Usage: scripts/demo.sh [extra args for `tributary-operator apply`]

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TRIBUTARY_ROOT"

ensure_build_deps
eval "$(bash scripts/tools.sh --env)"
eval "$(bash scripts/broker.sh start --env)"

# Said last, whether apply worked or not: the broker outlives this script.
hint() {
  cat >&2 <<EOF

Broker still running at $TRIBUTARY_BOOTSTRAP_SERVERS (log: $TRIBUTARY_RUN_DIR/broker.log).
  list topics:  $TRIBUTARY_TANSU topic list --broker tcp://$TRIBUTARY_BOOTSTRAP_SERVERS
  stop it:      scripts/broker.sh stop
EOF
}
trap hint EXIT

locked=()
if [[ -f Cargo.lock ]]; then locked=(--locked); fi

log "applying examples/ to $TRIBUTARY_BOOTSTRAP_SERVERS"
cargo run --release "${locked[@]}" -p tributary-operator -- \
  apply -f examples/ --bootstrap-servers "$TRIBUTARY_BOOTSTRAP_SERVERS" "$@"

# `tansu topic list` prints the raw metadata as JSON; show one line per topic.
log "topics now in the broker:"
"$TRIBUTARY_TANSU" topic list --broker "tcp://$TRIBUTARY_BOOTSTRAP_SERVERS" |
  python3 -c '
import json, sys
topics = json.load(sys.stdin)
for t in sorted(topics, key=lambda t: t["name"]):
    n = len(t["partitions"])
    print("  %s  (%d partition%s)" % (t["name"], n, "" if n == 1 else "s"))
if not topics:
    print("  (none)")
'
