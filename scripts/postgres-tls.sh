#!/usr/bin/env bash
# Runs a throwaway PostgreSQL cluster that speaks TLS only, on a free port of `localhost`, with a
# CA and certificates of its own made by openssl, for the relay's TLS tests. scripts/test.sh
# starts it and stops it on exit. It runs as user postgres when started by root (PostgreSQL
# refuses to run as root), as the caller otherwise.
#
# Usage: scripts/postgres-tls.sh start|stop [--env]
#   start   make the certificates, initdb and start it (or reuse the one running); waits until
#           it accepts connections
#   stop    stop it and delete its data directory (its log stays in the state dir)
#   --env   (start) print `export ...` lines for eval
#
# The cluster: plain-text connections are refused (pg_hba.conf has hostssl rules only); user
# postgres needs no password, except in database `certdb`, which takes only a client
# certificate (CN=postgres); user `tributary` (password `tributary`, SCRAM, which tokio-postgres
# binds to the TLS channel) owns database `scramdb`. The server certificate names DNS:localhost
# and nothing else, so `sslmode=verify-full` fails at 127.0.0.1.
# Files in TRIBUTARY_TEST_TLS_DIR (PEM): ca.crt (signed the server and client certificates),
#   client.crt and client.key (CN=postgres), other-ca.crt (a CA that signed nothing here).
#
# Env: TRIBUTARY_RUN_DIR   state dir (default <repo>/.run); the cluster's files go to its
#                          postgres-tls/ (certificates, port, log), its data to a temporary directory
#      TRIBUTARY_PG_BIN    directory of initdb and pg_ctl (default: the newest
#                          /usr/lib/postgresql/*/bin, else the one on PATH)
# Exports (--env): TRIBUTARY_TEST_TLS_DATABASE_URL  postgres://postgres@localhost:<port>/postgres
#                                                   (no sslmode: each test says which)
#                  TRIBUTARY_TEST_TLS_DIR           the certificates above

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_action "$@"

RUN_DIR="${TRIBUTARY_RUN_DIR:-$TRIBUTARY_ROOT/.run}"
mkdir -p "$RUN_DIR"
STATE="$(cd "$RUN_DIR" && pwd)/postgres-tls" # absolute: it is exported to tests
DATA_FILE="$STATE/data-dir"
PORT_FILE="$STATE/port"
START_ATTEMPTS=3

read_file() { if [[ -f $1 ]]; then tr -d '[:space:]' <"$1"; fi; }

# The cluster's own user: PostgreSQL does not run as root.
as_cluster_user() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_bin() {
  if [[ -n ${TRIBUTARY_PG_BIN:-} ]]; then
    printf '%s\n' "$TRIBUTARY_PG_BIN"
    return 0
  fi
  local newest
  newest="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)"
  if [[ -n $newest ]]; then
    dirname "$newest"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

print_env() {
  printf 'export TRIBUTARY_TEST_TLS_DATABASE_URL=%q\n' "postgres://postgres@localhost:$1/postgres"
  printf 'export TRIBUTARY_TEST_TLS_DIR=%q\n' "$STATE"
}

# running_port: prints the port and succeeds if our cluster is up.
running_port() {
  local data port bin
  data="$(read_file "$DATA_FILE")"
  port="$(read_file "$PORT_FILE")"
  [[ -n $data && -n $port && -d $data/pgdata ]] || return 1
  bin="$(pg_bin)" || return 1
  as_cluster_user "$bin/pg_ctl" -D "$data/pgdata" status >/dev/null 2>&1 && printf '%s\n' "$port"
}

# openssl_quietly <args...>: openssl's progress and notes go to a log, shown only on failure.
openssl_quietly() {
  openssl "$@" 2>>"$STATE/openssl.log" || {
    cat "$STATE/openssl.log" >&2
    die "openssl $1 failed"
  }
}

# new_ca <name> <common name>: a self-signed CA, <name>.crt and <name>.key in the state dir.
new_ca() {
  openssl_quietly req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$STATE/$1.key" -out "$STATE/$1.crt"
}

# issue <name> <common name> <extensions, one per line>: <name>.crt and <name>.key, signed by ca.
issue() {
  openssl_quietly req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
    -keyout "$STATE/$1.key" -out "$STATE/$1.csr"
  openssl_quietly x509 -req -in "$STATE/$1.csr" -CA "$STATE/ca.crt" -CAkey "$STATE/ca.key" -CAcreateserial \
    -days 7 -out "$STATE/$1.crt" -extfile <(printf '%s\n' "$3")
  rm -f "$STATE/$1.csr"
}

make_certificates() {
  command -v openssl >/dev/null 2>&1 || apt_install_missing openssl
  new_ca ca "Tributary test CA"
  new_ca other-ca "Tributary test CA that signed nothing"
  issue server localhost $'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE'
  issue client postgres $'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE'
}

# init_cluster <data dir>: initdb, the server's certificate files, TLS-only pg_hba.conf.
init_cluster() {
  local data=$1 bin=$2
  install -m 0644 "$STATE/server.crt" "$data/server.crt"
  install -m 0644 "$STATE/ca.crt" "$data/ca.crt"
  install -m 0600 "$STATE/server.key" "$data/server.key"
  if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$data"; fi
  as_cluster_user "$bin/initdb" -D "$data/pgdata" -U postgres -A trust -E UTF8 --no-sync >"$STATE/initdb.log" 2>&1 || {
    cat "$STATE/initdb.log" >&2
    die "initdb failed"
  }
  # First match wins; no rule takes a plain-text TCP connection.
  as_cluster_user tee "$data/pgdata/pg_hba.conf" >/dev/null <<EOF
local   all     postgres         trust
hostssl certdb  postgres  all    cert
hostssl all     tributary all    scram-sha-256
hostssl all     postgres  all    trust
EOF
}

# configure <data dir> <port>
configure() {
  as_cluster_user tee "$1/pgdata/postgresql.auto.conf" >/dev/null <<EOF
port = $2
listen_addresses = 'localhost'
unix_socket_directories = '$1'
ssl = on
ssl_cert_file = '$1/server.crt'
ssl_key_file = '$1/server.key'
ssl_ca_file = '$1/ca.crt'
# A test cluster: speed over durability.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

start_cluster() {
  local bin data port attempt
  bin="$(pg_bin)" || {
    apt_install_missing postgresql
    bin="$(pg_bin)" || die "no initdb found (set TRIBUTARY_PG_BIN)"
  }
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "PostgreSQL does not run as root and there is no user postgres (run as another user, or install postgresql)"
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE"
  make_certificates
  data="$(mktemp -d "${TMPDIR:-/tmp}/tributary-pg-tls.XXXXXX")"
  chmod 0755 "$data"
  printf '%s\n' "$data" >"$DATA_FILE"
  init_cluster "$data" "$bin"
  for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
    port="$(free_port 127.0.0.1)"
    configure "$data" "$port"
    if as_cluster_user "$bin/pg_ctl" -D "$data/pgdata" -l "$data/postgres.log" -w -t 30 start >/dev/null; then
      printf '%s\n' "$port" >"$PORT_FILE"
      as_cluster_user "$bin/psql" -X -q -h "$data" -p "$port" -U postgres -d postgres -c 'CREATE DATABASE certdb' \
        -c "CREATE ROLE tributary LOGIN PASSWORD 'tributary'" -c 'CREATE DATABASE scramdb OWNER tributary' >&2
      log "PostgreSQL with TLS only up at localhost:$port (certificates in $STATE)"
      return 0
    fi
    # Most likely the port was taken meanwhile: try another.
    log "PostgreSQL did not start on port $port (attempt $attempt)"
  done
  tail -n 20 "$data/postgres.log" >&2 || true
  die "PostgreSQL with TLS did not start; log: $data/postgres.log"
}

stop_cluster() {
  local data bin
  data="$(read_file "$DATA_FILE")"
  [[ -n $data && -d $data ]] || return 1
  if bin="$(pg_bin)" && [[ -d $data/pgdata ]]; then
    as_cluster_user "$bin/pg_ctl" -D "$data/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  cp "$data/postgres.log" "$STATE/postgres.log" 2>/dev/null || true
  rm -rf "$data"
  rm -f "$DATA_FILE" "$PORT_FILE"
}

case $cmd in
  start)
    if ! port="$(running_port)"; then
      stop_cluster || true
      start_cluster
      port="$(read_file "$PORT_FILE")"
    fi
    if $want_env; then print_env "$port"; fi
    ;;
  stop)
    if stop_cluster; then
      log "PostgreSQL with TLS stopped (log kept at $STATE/postgres.log)"
    else
      log "no PostgreSQL with TLS running"
    fi
    ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
