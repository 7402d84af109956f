#!/usr/bin/env bash
# Checks the Yocto layer yocto/meta-outpost without bitbake:
#  1. oelint-adv on every recipe and the layer config, once for the oldest and once for the
#     newest release the layer claims. Any error fails; warnings are printed. Suppressions live
#     in yocto/meta-outpost/.oelint.cfg or inline (`# nooelint: <rule>`), each with its reason.
#  2. scripts/yocto-crates.py --check: the crate list matches Cargo.lock, and the recipes'
#     vendored-crate paths, crate patches and license checksums match the tree.
# Uses the virtualenv .venv at the repository root if there is one, else .venv-lint (created,
# and ignored by git through its own .gitignore). Needs network only to install oelint-adv and
# for crates missing from ~/.cargo/registry.
set -euo pipefail
cd "$(dirname "$0")/.."

OELINT_VERSION=9.11.2   # docs/facts.md: the version checked on these machines
RELEASES="scarthgap wrynose"
LAYER=yocto/meta-outpost

if [ -x .venv/bin/python ]; then
  venv=.venv
else
  venv=.venv-lint
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    echo '*' > "$venv/.gitignore"
  fi
fi
if [ "$("$venv/bin/oelint-adv" --version 2>/dev/null)" != "oelint-adv $OELINT_VERSION" ]; then
  "$venv/bin/python" -m pip install -q "oelint-adv==$OELINT_VERSION"
fi

status=0
shopt -s nullglob
files=("$LAYER"/conf/layer.conf "$LAYER"/recipes-*/*/*.bb "$LAYER"/recipes-*/*/*.bbappend)
for release in $RELEASES; do
  # --exit-zero: oelint-adv exits 1 on warnings too; errors are counted here instead.
  out=$(OELINT_CONFIG="$LAYER/.oelint.cfg" "$venv/bin/oelint-adv" --quiet --relpaths \
          --mode all --release "$release" --hide info --exit-zero "${files[@]}" 2>&1)
  errors=$(grep -c ':error:' <<<"$out" || true)
  warnings=$(grep -c ':warning:' <<<"$out" || true)
  echo "oelint-adv $OELINT_VERSION, release $release: $errors errors, $warnings warnings (${#files[@]} files)"
  [ -n "$out" ] && sed 's/^/  /' <<<"$out"
  if [ "$errors" -ne 0 ]; then
    status=1
  fi
done

"$venv/bin/python" scripts/yocto-crates.py --check || status=1

exit $status
