#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers at 127.0.0.1:5432 and accepts user
# `postgres` without a password, for the outbox-relay tests.
#   running             -> nothing to do (quiet)
#   installed but down  -> pg_ctlcluster ... start
#   not installed       -> apt-get install postgresql
# Then checks trust auth over TCP and, if needed, adds a trust rule for 127.0.0.1.
#
# Usage: scripts/postgres.sh [--env]    (--env prints `export TRIBUTARY_TEST_DATABASE_URL=...`)
# Env:   TRIBUTARY_TEST_DATABASE_URL  if set to another URL, that server is used as is
#        TRIBUTARY_PG_PORT (5432), TRIBUTARY_PG_CLUSTER (main): Debian cluster to manage
# Exports (--env): TRIBUTARY_TEST_DATABASE_URL

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_env_flag "$@"

PG_PORT="${TRIBUTARY_PG_PORT:-5432}"
PG_CLUSTER="${TRIBUTARY_PG_CLUSTER:-main}"
URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
WAIT_SECONDS=30

print_env() { printf 'export TRIBUTARY_TEST_DATABASE_URL=%q\n' "$1"; }

# A user-supplied database: not ours to start or reconfigure.
if [[ -n ${TRIBUTARY_TEST_DATABASE_URL:-} && $TRIBUTARY_TEST_DATABASE_URL != "$URL" ]]; then
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -t 10 -d "$TRIBUTARY_TEST_DATABASE_URL" ||
      die "TRIBUTARY_TEST_DATABASE_URL is set but that server does not answer"
  fi
  if $want_env; then print_env "$TRIBUTARY_TEST_DATABASE_URL"; fi
  exit 0
fi

ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; }

# The password-less connection the tests will make (ignore any PGPASSWORD the
# caller has, which would hide a missing trust rule).
trust_ok() {
  env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
    psql -X -w -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

# Fast path: quiet when everything is already fine.
if command -v pg_isready >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 && ready && trust_ok; then
  if $want_env; then print_env "$URL"; fi
  exit 0
fi

as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    sudo -n -u postgres "$@"
  fi
}

# Newest installed major version that has our cluster (Debian layout).
cluster_version() {
  local v found=""
  [[ -d /etc/postgresql ]] || return 1
  for v in $(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V); do
    [[ -d /etc/postgresql/$v/$PG_CLUSTER ]] && found=$v
  done
  [[ -n $found ]] && printf '%s\n' "$found"
}

if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  if port_open; then
    # Something already serves the port (e.g. a container); we only need the client.
    apt_install_missing postgresql-client
  else
    apt_install_missing postgresql
  fi
fi

if ! ready; then
  ver="$(cluster_version)" || {
    apt_install_missing postgresql
    ver="$(cluster_version)" || {
      # postgresql was there but its cluster was dropped: recreate it.
      newest="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
      [[ -n $newest ]] || die "postgresql is installed but no server version found in /usr/lib/postgresql"
      log "creating PostgreSQL $newest cluster '$PG_CLUSTER' on port $PG_PORT"
      as_root pg_createcluster "$newest" "$PG_CLUSTER" -p "$PG_PORT" >&2
      ver=$newest
    }
  }
  log "starting PostgreSQL $ver/$PG_CLUSTER"
  # No systemd here (containers/CI): start the cluster directly. "Already
  # running" is fine; a real failure shows up as the wait below timing out.
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$PG_CLUSTER" start >&2 || true
  for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
    ready && break
    sleep 0.5
  done
  if ! ready; then
    pg_lsclusters >&2 || true
    tail -n 20 "/var/log/postgresql/postgresql-$ver-$PG_CLUSTER.log" >&2 2>/dev/null || true
    die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT after ${WAIT_SECONDS}s"
  fi
fi

if ! trust_ok; then
  # A fresh Debian install uses peer auth on the socket and scram-sha-256 over
  # TCP. This is a throwaway test machine, so we let user postgres in from
  # 127.0.0.1 without a password. Never do this on a shared or production server.
  ver="$(cluster_version)" || die "user postgres cannot log in over TCP without a password, and this is not a Debian-managed cluster we could reconfigure"
  hba="$(as_postgres psql -X -p "$PG_PORT" -tAc 'show hba_file' 2>/dev/null || true)"
  hba=${hba:-/etc/postgresql/$ver/$PG_CLUSTER/pg_hba.conf}
  rule="host all postgres 127.0.0.1/32 trust"
  log "adding '$rule' to $hba (throwaway test machine) and reloading"
  if ! grep -qxF "$rule" "$hba" 2>/dev/null; then
    # First matching line wins in pg_hba.conf, so the rule goes on top.
    as_root sed -i "1i # Added by tributary scripts/postgres.sh: password-less test access.\n$rule" "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$PG_CLUSTER" reload >&2
  for ((i = 0; i < 10; i++)); do
    trust_ok && break
    sleep 0.5
  done
  trust_ok || die "still cannot connect as postgres@127.0.0.1:$PG_PORT without a password (see $hba)"
fi

log "PostgreSQL ready at $URL"
if $want_env; then print_env "$URL"; fi
