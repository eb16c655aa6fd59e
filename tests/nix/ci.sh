#!/usr/bin/env bash
# Nix checks that need nothing but Debian's nix-bin (run by .ci/run):
#   1. every .nix file parses (nix-instantiate --parse);
#   2. the module's pure rendering (darwin-modules/render.nix) evaluates as tests expect;
#   3. flake.lock is consistent with flake.nix;
#   4. when checkouts of nix-darwin and nixpkgs.lib are present (see eval-local.sh), the full
#      module evaluation through nix-darwin's eval-config.nix.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "tests/nix/ci.sh: nix-instantiate not found; install Debian's nix-bin" >&2
  exit 1
fi

passed=0
failed=0

while IFS= read -r -d '' f; do
  if nix-instantiate --parse "$f" >/dev/null; then
    passed=$((passed + 1))
  else
    echo "FAIL: $f does not parse" >&2
    failed=$((failed + 1))
  fi
done < <(find . \( -path ./target -o -path ./.git \) -prune -o -name '*.nix' -print0)

# Evaluates a test file returning { failures; passed; }; prints the count, fails on failures.
run_eval() {
  local file=$1 n
  if n=$(nix-instantiate --eval --strict -E "
      let r = import $PWD/$file; in
      if r.failures == [ ] then r.passed
      else throw \"failed: \${builtins.concatStringsSep \"; \" r.failures}\""); then
    echo "ok: $file ($n checks)"
    passed=$((passed + n))
  else
    echo "FAIL: $file" >&2
    failed=$((failed + 1))
  fi
}
run_eval tests/nix/render-test.nix
run_eval tests/nix/lock-check.nix

checkouts=${NIX_CHECKOUTS:-$HOME/.cache/gitlab-runner-tart-driver}
nix_darwin=${NIX_DARWIN:-$checkouts/nix-darwin}
nixpkgs_lib=${NIXPKGS_LIB:-$checkouts/nixpkgs.lib}
if [ -e "$nix_darwin" ] && [ -e "$nixpkgs_lib" ]; then
  if NIX_DARWIN=$nix_darwin NIXPKGS_LIB=$nixpkgs_lib tests/nix/eval-local.sh; then
    passed=$((passed + 1))
  else
    echo "FAIL: tests/nix/eval-local.sh" >&2
    failed=$((failed + 1))
  fi
else
  echo "skipped: full module evaluation (no nix-darwin / nixpkgs.lib checkouts; see tests/nix/eval-local.sh)"
fi

echo "nix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
