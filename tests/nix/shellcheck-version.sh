#!/usr/bin/env bash
# The Nix checks run ShellCheck 0.11 or refuse to run (tests/nix/shellcheck.sh): ci.sh and
# module-eval.sh (which shellchecks the activate scripts) stop at once, saying why, when CI
# does not name a ShellCheck or names one of another version, rather than passing scripts
# with Debian 12's 0.9 that nixpkgs' 0.11 fails. Stand-in ShellChecks report a version.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for v in 0.9.0 0.10.0 0.11.0; do
  mkdir -p "$work/$v"
  cat >"$work/$v/shellcheck" <<SH
#!/bin/sh
printf 'ShellCheck - shell script analysis tool\nversion: $v\n'
SH
  chmod +x "$work/$v/shellcheck"
done

fail=0
# Runs "$@" (the rest of the environment as is); passes when it exits non-zero within its
# first steps and says $want on stderr.
refuses() {
  local what=$1 want=$2 status=0
  shift 2
  TART_NIX_SHELLCHECK_TEST=running timeout 60 "$@" >"$work/out" 2>"$work/err" || status=$?
  if [ "$status" != 0 ] && [ "$status" != 124 ] && grep -q -- "$want" "$work/err"; then
    echo "ok: $what"
  else
    echo "FAIL: $what: exit $status, stderr:" >&2
    cat "$work/err" >&2
    fail=1
  fi
}
for entry in tests/nix/ci.sh tests/nix/module-eval.sh; do
  refuses "$entry under CI without SHELLCHECK refuses to run" "SHELLCHECK is not set" \
    env -u SHELLCHECK CI=true PATH="$work/0.11.0:$PATH" "$entry"
  refuses "$entry refuses ShellCheck 0.9 (Debian 12's)" "is version '0.9.0'" \
    env SHELLCHECK="$work/0.9.0/shellcheck" "$entry"
done
refuses "without SHELLCHECK outside CI, a shellcheck on PATH other than 0.11 is refused" \
  "'shellcheck' is version '0.10.0'" \
  env -u SHELLCHECK -u CI PATH="$work/0.10.0:$PATH" tests/nix/module-eval.sh

# The one it takes.
# shellcheck disable=SC2016 # expanded by the inner shell
picked=$(env SHELLCHECK="$work/0.11.0/shellcheck" bash -c '. tests/nix/shellcheck.sh; echo "$shellcheck"')
if [ "$picked" = "$work/0.11.0/shellcheck" ]; then
  echo "ok: SHELLCHECK naming 0.11 is used"
else
  echo "FAIL: SHELLCHECK naming 0.11 gave '$picked'" >&2
  fail=1
fi
# shellcheck disable=SC2016 # expanded by the inner shell
picked=$(env -u SHELLCHECK -u CI PATH="$work/0.11.0:$PATH" bash -c '. tests/nix/shellcheck.sh; echo "$shellcheck"')
if [ "$picked" = shellcheck ]; then
  echo "ok: outside CI, a shellcheck 0.11 on PATH is used"
else
  echo "FAIL: outside CI with 0.11 on PATH: got '$picked'" >&2
  fail=1
fi
exit "$fail"
