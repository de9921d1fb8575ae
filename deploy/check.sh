#!/usr/bin/env bash
# Render every overlay under deploy/overlays with kustomize and validate the
# result against the Kubernetes API schemas (strict: unknown fields fail).
#
#   deploy/check.sh                      # validate against KUBERNETES_VERSION
#   KUBERNETES_VERSION=1.35.0 deploy/check.sh
set -euo pipefail

# Oldest Kubernetes we target; every field used must exist there.
KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.33.0}"
# Pinned so the schema set (and its default version) does not shift under us.
KUBERNETES_VALIDATE_PIP="kubernetes-validate==1.37.0"

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

command -v kubectl >/dev/null || { echo "check.sh: kubectl not found" >&2; exit 1; }

validate=(kubernetes-validate)
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet "$KUBERNETES_VALIDATE_PIP"
  # The module works even when pip's script directory is not on PATH.
  validate=(python3 -m kubernetes_validate)
fi

rendered="$(mktemp)"
report="$(mktemp)"
trap 'rm -f "$rendered" "$report"' EXIT

failed=0
shopt -s nullglob
overlays=("$deploy_dir"/overlays/*/)
[ ${#overlays[@]} -gt 0 ] || { echo "check.sh: no overlays in $deploy_dir/overlays" >&2; exit 1; }

for dir in "${overlays[@]}"; do
  overlay="$(basename "$dir")"
  if ! kubectl kustomize "$dir" >"$rendered" 2>"$report"; then
    echo "FAIL $overlay: kustomize build failed"
    sed 's/^/    /' "$report"
    failed=1
    continue
  fi
  # kustomize writes each resource's top-level kind at column 0.
  count="$(grep -c '^kind:' "$rendered" || true)"
  # A resource whose apiVersion/kind has no schema (a typo, or an API removed
  # in this Kubernetes version) is only a WARN with exit status 0; all our
  # kinds are built in, so treat any warning as a failure too.
  if "${validate[@]}" --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" \
      "$rendered" >"$report" 2>&1 && ! grep -q '^WARN' "$report"; then
    echo "ok   $overlay: $count resources valid (Kubernetes $KUBERNETES_VERSION, strict)"
  else
    echo "FAIL $overlay: $count resources, schema validation failed"
    sed 's/^/    /' "$report"
    failed=1
  fi
done

exit "$failed"
