#!/usr/bin/env bash
# Runs a throwaway single-node Kafka-protocol broker (tansu, in-memory storage) on
# a free port, for tests, the demo and scripts/kind-e2e.sh.
#
# Usage: scripts/broker.sh start|stop|restart|status [--env]
#   start    start one (or reuse the one already running); waits until it accepts connections
#   stop     stop it (SIGINT, then SIGKILL after 10 s) and remove pid/port/host files
#   restart  stop, then start on the SAME port (clients reconnect to the same address);
#            memory storage: all topics and records are gone afterwards
#   status   exit 0 if running and accepting connections, 3 otherwise
#   --env    (start/restart/status) print `export ...` lines for eval
#
# Env: TRIBUTARY_RUN_DIR       state dir (default <repo>/.run): broker.pid, broker.port, broker.log;
#                              one broker per dir (scripts/test.sh runs its own in a dir of its own)
#      TRIBUTARY_BROKER_PORT   port for `start` (default: a free one)
#      TRIBUTARY_BROKER_HOST   IPv4 address to listen on and advertise (default: the running
#                              broker's, else 127.0.0.1; kind-e2e.sh uses the kind network's
#                              gateway, which the cluster's pods reach)
#      TRIBUTARY_BROKER_START_TIMEOUT  seconds to wait for the port (default 30)
#      TRIBUTARY_BROKER_RUST_LOG  tansu log filter (default warn; ignores an inherited RUST_LOG)
#      TRIBUTARY_TANSU         tansu binary (default: from scripts/tools.sh)
# Exports (--env): TRIBUTARY_BOOTSTRAP_SERVERS, TRIBUTARY_RUN_DIR, TRIBUTARY_BROKER_CTL

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_action "$@"

RUN_DIR="${TRIBUTARY_RUN_DIR:-$TRIBUTARY_ROOT/.run}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)" # absolute: it is exported to tests
PID_FILE="$RUN_DIR/broker.pid"
PORT_FILE="$RUN_DIR/broker.port"
LOG_FILE="$RUN_DIR/broker.log"
HOST_FILE="$RUN_DIR/broker.host"
START_TIMEOUT="${TRIBUTARY_BROKER_START_TIMEOUT:-30}"
SELF="$TRIBUTARY_ROOT/scripts/broker.sh"

# Tests may call `broker.sh restart` while test.sh's trap calls `stop`: serialise.
# (The broker itself does not inherit this fd: Python's Popen closes it.)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$RUN_DIR/broker.lock"
  flock 9
fi

read_file() { if [[ -f $1 ]]; then tr -d '[:space:]' <"$1"; fi; }

# The address a running broker was started on is remembered, so status/restart/stop
# need not be told again.
HOST="${TRIBUTARY_BROKER_HOST:-$(read_file "$HOST_FILE")}"
HOST="${HOST:-127.0.0.1}"

# Alive AND really tansu: a stale pid file may name a recycled pid.
pid_is_tansu() {
  local pid=$1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # (No `| grep -q` under pipefail: grep exiting early can SIGPIPE the writer.)
  local args
  if [[ -r /proc/$pid/cmdline ]]; then
    args="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
  else
    args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
  fi
  [[ $args == *tansu* ]]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

print_env() {
  printf 'export TRIBUTARY_BOOTSTRAP_SERVERS=%q\n' "$HOST:$1"
  printf 'export TRIBUTARY_RUN_DIR=%q\n' "$RUN_DIR"
  printf 'export TRIBUTARY_BROKER_CTL=%q\n' "$SELF"
}

tansu_bin() {
  if [[ -z ${TRIBUTARY_TANSU:-} || ! -x ${TRIBUTARY_TANSU:-} ]]; then
    eval "$("$TRIBUTARY_ROOT/scripts/tools.sh" --env)"
  fi
  printf '%s\n' "$TRIBUTARY_TANSU"
}

# launch <tansu> <port>: start tansu detached (own session, so a Ctrl-C in the
# terminal that ran the demo does not reach it; tansu treats SIGINT as "stop").
# Prints the pid.
launch() {
  local tansu=$1 port=$2
  # Flags beat tansu's env fallbacks (CLUSTER_ID, LISTENER_URL, STORAGE_ENGINE, ...),
  # but SCHEMA_REGISTRY and OTEL_EXPORTER_OTLP_ENDPOINT have no flag here: drop them.
  env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
    NO_COLOR=1 RUST_LOG="${TRIBUTARY_BROKER_RUST_LOG:-warn}" \
    python3 - "$LOG_FILE" "$tansu" broker \
    --cluster-id tributary \
    --listener-url "tcp://$HOST:$port" \
    --advertised-listener-url "tcp://$HOST:$port" \
    --storage-engine memory://tansu/ <<'PY'
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)
print(p.pid)
PY
}

clear_state() { rm -f "$PID_FILE" "$PORT_FILE" "$HOST_FILE"; }

fail_start() {
  local pid=$1
  printf '%s: error: %s\n--- last lines of %s ---\n' "${0##*/}" "$2" "$LOG_FILE" >&2
  tail -n 40 "$LOG_FILE" >&2 || true
  if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  clear_state
  exit 1
}

# start_broker <port or empty>: empty picks a free port (and may pick another one
# if that loses a race); a given port is kept (restart) and retried until the timeout.
start_broker() {
  local fixed_port=$1 tansu port pid deadline attempts=0
  tansu="$(tansu_bin)"
  deadline=$((SECONDS + START_TIMEOUT))
  # A small window before tansu binds the port is covered by retrying with a new one.
  port=${fixed_port:-$(free_port "$HOST")}
  while :; do
    attempts=$((attempts + 1))
    # Someone else listening there would make the readiness check below lie.
    while port_open "$port"; do
      if [[ -z $fixed_port ]]; then
        port=$(free_port "$HOST")
      else
        ((SECONDS < deadline)) || fail_start "" "$HOST:$port is in use by another process"
        sleep 0.5
      fi
    done
    pid="$(launch "$tansu" "$port")"
    printf '%s\n' "$pid" >"$PID_FILE"
    printf '%s\n' "$port" >"$PORT_FILE"
    printf '%s\n' "$HOST" >"$HOST_FILE"
    while pid_is_tansu "$pid" && ! port_open "$port"; do
      ((SECONDS < deadline)) || fail_start "$pid" "tansu did not accept connections on $HOST:$port within ${START_TIMEOUT}s"
      sleep 0.1
    done
    if pid_is_tansu "$pid"; then
      log "tansu broker up: pid $pid, bootstrap $HOST:$port, log $LOG_FILE"
      return 0
    fi
    # It died at startup, most likely "address in use".
    ((SECONDS < deadline)) || fail_start "" "tansu exited during startup on port $port"
    if [[ -z $fixed_port ]]; then
      ((attempts < 3)) || fail_start "" "tansu exited during startup ($attempts attempts)"
      port=$(free_port "$HOST")
    else
      sleep 0.5
    fi
  done
}

stop_broker() {
  local pid i
  pid="$(read_file "$PID_FILE")"
  if ! pid_is_tansu "$pid"; then
    clear_state
    return 1
  fi
  # SIGINT, not SIGTERM: on SIGTERM tansu keeps listening and waits ~5 s for
  # open client connections to drain; on SIGINT it exits within ~0.5 s.
  kill -INT "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_is_tansu "$pid" || break
    sleep 0.1
  done
  if pid_is_tansu "$pid"; then
    log "tansu (pid $pid) ignored SIGINT for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_is_tansu "$pid" || break
      sleep 0.1
    done
  fi
  clear_state
  return 0
}

# running_port: prints the port and succeeds if our broker is up and accepting.
running_port() {
  local pid port
  pid="$(read_file "$PID_FILE")"
  port="$(read_file "$PORT_FILE")"
  pid_is_tansu "$pid" && [[ -n $port ]] && port_open "$port" && printf '%s\n' "$port"
}

case $cmd in
  start)
    if port="$(running_port)"; then
      log "reusing running tansu broker: pid $(read_file "$PID_FILE"), bootstrap $HOST:$port"
    else
      # A live process that is not accepting yet (another start in progress died?)
      # or stale files: start from a clean slate.
      stop_broker || true
      : >"$LOG_FILE"
      start_broker "${TRIBUTARY_BROKER_PORT:-}"
      port="$(read_file "$PORT_FILE")"
    fi
    if $want_env; then print_env "$port"; fi
    ;;
  restart)
    port="$(read_file "$PORT_FILE")"
    port=${port:-${TRIBUTARY_BROKER_PORT:-}}
    stop_broker || log "no running broker; starting one"
    printf -- '--- restart %s (port %s) ---\n' "$(date -u +%FT%TZ)" "${port:-new}" >>"$LOG_FILE"
    start_broker "$port"
    port="$(read_file "$PORT_FILE")"
    if $want_env; then print_env "$port"; fi
    ;;
  stop)
    if stop_broker; then
      log "tansu broker stopped (log kept at $LOG_FILE)"
    else
      log "no tansu broker running"
    fi
    ;;
  status)
    if port="$(running_port)"; then
      log "running: pid $(read_file "$PID_FILE"), bootstrap $HOST:$port, log $LOG_FILE"
      if $want_env; then print_env "$port"; fi
    else
      log "not running"
      exit 3
    fi
    ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
