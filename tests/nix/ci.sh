#!/usr/bin/env bash
# Nix checks, run by .ci/run (needs Debian's nix-bin, ShellCheck 0.11 as $SHELLCHECK, see
# tests/nix/shellcheck.sh, and a debug build):
#   1. every .nix file parses (nix-instantiate --parse) and no line is wider than nixfmt's 100.
#      That width is all of nixfmt's layout checked here: nixfmt (Haskell) is in none of the
#      registries this CI reaches (Debian, PyPI, npm, crates.io), so indentation, line breaks
#      and the rest of its style are unchecked until the flake's `nixfmt` check runs it (on a
#      machine with Nix and nixpkgs: `nix build .#checks.<system>.nixfmt`, or
#      `nix flake check`). Closing the gap takes a CI job on such a machine, or a nixfmt binary
#      built elsewhere (cabal, from Hackage) handed to this CI to run `nixfmt --check`;
#   2. the module's pure rendering (darwin-modules/render.nix) evaluates as tests expect;
#   3. flake.lock is consistent with flake.nix, and LICENSE files match the licence declared;
#   4. the module evaluated through nix-darwin's eval-config.nix at the pinned revision, with
#      each configuration's activate script shellchecked as nix-darwin does (module-eval.sh);
#   5. the shell scripts the flake's shellcheck check covers (tests/nix/*.sh) pass ShellCheck.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "tests/nix/ci.sh: nix-instantiate not found; install Debian's nix-bin" >&2
  exit 1
fi
# The ShellCheck of every check below (module-eval.sh picks the same one): 0.11, or exit.
# shellcheck source-path=SCRIPTDIR/../..
. tests/nix/shellcheck.sh
export SHELLCHECK=$shellcheck

passed=0
failed=0

# ... and the entry points refuse any other (tests/nix/shellcheck-version.sh runs this
# script, which must stop above).
if [ -z "${TART_NIX_SHELLCHECK_TEST:-}" ]; then
  if tests/nix/shellcheck-version.sh; then
    passed=$((passed + 1))
  else
    echo "FAIL: tests/nix/shellcheck-version.sh" >&2
    failed=$((failed + 1))
  fi
fi

while IFS= read -r -d '' f; do
  if nix-instantiate --parse "$f" >/dev/null; then
    passed=$((passed + 1))
  else
    echo "FAIL: $f does not parse" >&2
    failed=$((failed + 1))
  fi
  # No nixfmt here (see the top): its width of 100 only.
  if awk -f tests/nix/width.awk "$f"; then
    passed=$((passed + 1))
  else
    echo "FAIL: $f has lines nixfmt would wrap" >&2
    failed=$((failed + 1))
  fi
done < <(find . \( -path ./target -o -path ./.git \) -prune -o -name '*.nix' -print0)
echo "NOT CHECKED: nixfmt's layout beyond its width of 100 (no nixfmt in Debian, PyPI, npm or crates.io); only the flake's nixfmt check (nix build .#checks.<system>.nixfmt, on a machine with Nix) runs nixfmt --check"

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

# The licence the package declares (Cargo.toml, nix/package.nix) has its texts.
if grep -q '^license = "MIT OR Apache-2.0"$' Cargo.toml && [ -s LICENSE-MIT ] && [ -s LICENSE-APACHE ] \
  && grep -q 'Apache License' LICENSE-APACHE && grep -q 'Permission is hereby granted' LICENSE-MIT; then
  echo "ok: LICENSE-MIT and LICENSE-APACHE for MIT OR Apache-2.0"
  passed=$((passed + 1))
else
  echo "FAIL: the package declares MIT OR Apache-2.0 but LICENSE-MIT / LICENSE-APACHE are missing" >&2
  failed=$((failed + 1))
fi

# As the flake's shellcheck check (nix/checks.nix) runs it.
if "$shellcheck" tests/nix/*.sh; then
  echo "ok: shellcheck $shellcheck_version passes tests/nix/*.sh"
  passed=$((passed + 1))
else
  echo "FAIL: shellcheck $shellcheck_version fails tests/nix/*.sh" >&2
  failed=$((failed + 1))
fi

if tests/nix/module-eval.sh; then
  passed=$((passed + 1))
else
  echo "FAIL: tests/nix/module-eval.sh" >&2
  failed=$((failed + 1))
fi

echo "nix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
