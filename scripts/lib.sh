# shellcheck shell=bash
# Helpers shared by the scripts in this folder. Source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Absolute path of the repository root (this file lives in <root>/scripts).
# shellcheck disable=SC2034 # used by the scripts that source this file
TRIBUTARY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Progress goes to stderr so that stdout stays clean for `eval "$(... --env)"`.
log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 1
}

# The running script's leading comment block (after the #! line), as its usage text.
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"; }

# Sets want_env from the one optional argument of a script that can print `export` lines:
# --env, or -h/--help for the usage.
parse_env_flag() {
  want_env=false
  case "${1:-}" in
    --env) want_env=true ;;
    "") ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# free_port <IPv4 address>: a port free there now (the kernel's choice for port 0). Another
# process may take it before the caller binds it: callers retry with a new one.
free_port() {
  python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}

# Install the Debian packages that are not installed yet. apt is slow (the
# `apt-get update` alone takes a while), so it only runs when something is missing.
apt_install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get to install them"
  log "installing with apt-get: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# What compiling the workspace needs beyond cargo: rdkafka-sys builds the bundled
# librdkafka with its mklove ./configure + `make libs`, which compiles both src/
# (C) and src-cpp/ (C++), so gcc, g++ and make are needed; libz-sys links the
# system zlib when pkg-config finds it (else it compiles its bundled copy).
# Optional rdkafka features pull in more -sys crates; Cargo.lock tells which are
# in the graph, and each maps to the system package its build script looks for.
ensure_build_deps() {
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found on PATH; install a Rust toolchain (https://rustup.rs) first"
  if ! command -v dpkg >/dev/null 2>&1; then
    local tool
    for tool in cc c++ make; do
      command -v "$tool" >/dev/null 2>&1 || die "$tool not found (needed to build librdkafka)"
    done
    return 0
  fi
  local pkgs=(gcc g++ make libc6-dev pkg-config zlib1g-dev)
  local lock="$TRIBUTARY_ROOT/Cargo.lock"
  if [[ ! -f $lock ]] || lock_has openssl-sys "$lock"; then pkgs+=(libssl-dev); fi # rdkafka "ssl"
  if lock_has openssl-src "$lock"; then pkgs+=(perl); fi                            # "ssl-vendored"
  if lock_has sasl2-sys "$lock"; then pkgs+=(libsasl2-dev); fi                      # "gssapi"/"sasl"
  if lock_has curl-sys "$lock"; then pkgs+=(libcurl4-openssl-dev); fi               # "curl"
  if lock_has cmake "$lock"; then pkgs+=(cmake); fi                                 # "cmake-build"
  apt_install_missing "${pkgs[@]}"
}

# lock_has <crate> <Cargo.lock>: is that crate in the resolved dependency graph?
lock_has() { [[ -f $2 ]] && grep -qxF "name = \"$1\"" "$2"; }

# why_no_cluster: when no Kubernetes API server answers (kubeconfig from $KUBECONFIG, else
# ~/.kube/config, else in-cluster), prints why and succeeds; when one answers, fails silently.
# Needs TRIBUTARY_KUBECTL (scripts/tools.sh).
why_no_cluster() {
  # With no kubeconfig at all kubectl falls back to http://localhost:8080, where the
  # operator's own /readyz may be listening: do not mistake that for a cluster.
  if [[ -z ${KUBECONFIG:-} && ! -f $HOME/.kube/config && -z ${KUBERNETES_SERVICE_HOST:-} ]]; then
    echo "no Kubernetes cluster configured (KUBECONFIG unset, no ~/.kube/config)"
  elif ! "$TRIBUTARY_KUBECTL" get --raw=/readyz --request-timeout=5s >/dev/null 2>&1; then
    echo "no Kubernetes cluster answers (KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config})"
  else
    return 1
  fi
}

# The command line of a script run as `<script> <action> [--env]`: sets `cmd` (the action) and
# `want_env` (whether --env was given) for the caller.
# shellcheck disable=SC2034
parse_action() {
  cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  want_env=false
  local arg
  for arg in "$@"; do
    case $arg in
      --env) want_env=true ;;
      *) die "unknown argument: $arg (try --help)" ;;
    esac
  done
}
