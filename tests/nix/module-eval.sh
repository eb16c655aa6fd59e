#!/usr/bin/env bash
# Full evaluation of the nix-darwin module through nix-darwin's eval-config.nix, with a
# stand-in pkgs (tests/nix/eval.nix), plus offline flake checks. Needs checkouts of
#   NIX_DARWIN   nix-darwin, a git repository containing adda04f0bf4819575b1978c2f8d78401b3c2be12
#                (branch nix-darwin-26.05) or a source tree of exactly that revision;
#   NIXPKGS_LIB  nix-community/nixpkgs.lib, a git repository containing
#                de42d44212d207476489bce163375d8306a26d59 or a source tree of it.
# Each is verified against its pinned narHash. Optional: TART_DRIVER_BIN, a driver binary
# with the runner-config subcommand (default: target/debug/gitlab-runner-tart-driver) to
# also render config.toml from the evaluated spec.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
export NIX_CONFIG='experimental-features = nix-command flakes'

ND_REV=adda04f0bf4819575b1978c2f8d78401b3c2be12
ND_HASH=sha256-xIbRSwDB1GBAUsWsQZUjudGfAGQt3BOpsWaO/ugVa4w=
NL_REV=de42d44212d207476489bce163375d8306a26d59
NL_HASH=sha256-0iaTCZDEORJeWamOjfDZaoZZx686f7QO5oL3ynmj+ew=

: "${NIX_DARWIN:?set NIX_DARWIN to a nix-darwin checkout}"
: "${NIXPKGS_LIB:?set NIXPKGS_LIB to a nixpkgs.lib checkout}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Puts revision $2 of checkout $1 into the store; checks its narHash is $3.
stage() {
  local src=$1 rev=$2 hash=$3 name=$4 dir got
  dir=$work/$name/source
  mkdir -p "$dir"
  if git -C "$src" cat-file -e "$rev^{commit}" 2>/dev/null; then
    git -C "$src" archive "$rev" | tar -x -C "$dir"
  else
    cp -R "$src/." "$dir"
    rm -rf "$dir/.git"
  fi
  got=$(nix hash path "$dir")
  if [ "$got" != "$hash" ]; then
    echo "eval-local: $src is not $name at $rev (narHash $got, expected $hash)" >&2
    return 1
  fi
  nix-store --add "$dir"
}
ND=$(stage "$NIX_DARWIN" "$ND_REV" "$ND_HASH" nix-darwin)
NL=$(stage "$NIXPKGS_LIB" "$NL_REV" "$NL_HASH" nixpkgs.lib)
echo "nix-darwin  $ND_REV -> $ND"
echo "nixpkgs.lib $NL_REV -> $NL"

token=glrt-TEST-$RANDOM$RANDOM-never-in-the-store
tokens=$work/tokens
mkdir -p "$tokens"
printf '%s\n' "$token" >"$tokens/macos.token"
printf '%s\n' "$token" >"$tokens/linux.token"
chmod 600 "$tokens"/*.token

expr="import $repo/tests/nix/eval.nix {
  lib = import $NL/lib; nix-darwin = $ND; tokenDir = \"$tokens\"; token = \"$token\"; }"
result=$(nix-instantiate --read-write-mode --eval --strict -E "
  let r = $expr; in
  if r.failures == [ ] then r.passed
  else throw \"failed: \${builtins.concatStringsSep \"; \" r.failures}\"")
echo "ok: module evaluation through eval-config.nix ($result checks)"

# The rendered spec, through the real runner-config, gives a config.toml whose `concurrent`
# equals every runner's --concurrency.
nix eval --raw --impure --expr "($expr).specText" >"$work/spec.json"
driver=${TART_DRIVER_BIN:-$repo/target/debug/gitlab-runner-tart-driver}
if [ -x "$driver" ] && "$driver" runner-config --help >/dev/null 2>&1; then
  "$driver" runner-config --spec "$work/spec.json" --output "$work/config.toml"
  mode=$(stat -c %a "$work/config.toml" 2>/dev/null || stat -f %Lp "$work/config.toml")
  [ "$mode" = 600 ] || { echo "eval-local: config.toml has mode $mode, not 600" >&2; exit 1; }
  nix-instantiate --eval --strict -E "
    let
      c = builtins.fromTOML (builtins.readFile $work/config.toml);
      afterFlag = args: builtins.elemAt args (builtins.length args - 1);
      ok = builtins.all (r: afterFlag r.custom.prepare_args == toString c.concurrent
        && builtins.elemAt r.custom.prepare_args 3 == \"--concurrency\"
        && r.executor == \"custom\" && r.shell == \"bash\" && r.token == \"$token\") c.runners;
    in if ok && c.concurrent == 2 && builtins.length c.runners == 2 then true
       else throw \"config.toml does not match the spec\"" >/dev/null
  echo "ok: runner-config rendered config.toml (mode 600, concurrent = every --concurrency = 2)"
  # The driver accepts the rendered YAML (it rejects unknown keys and bad values on load).
  for r in macos linux; do
    nix eval --raw --impure --expr "($expr).yamlTexts.$r" >"$work/$r.yaml"
    if "$driver" gc --dry-run --config "$work/$r.yaml" 2>&1 | grep -q 'is invalid'; then
      echo "eval-local: the driver rejects the rendered $r.yaml:" >&2
      "$driver" gc --dry-run --config "$work/$r.yaml" >&2 || true
      exit 1
    fi
  done
  echo "ok: the driver loads the rendered driver configs"
else
  echo "skipped: runner-config (no driver binary with the subcommand at $driver)"
fi

# Offline flake checks: the lock resolves from the seeded store, and outputs evaluate with
# nixpkgs replaced by nixpkgs.lib (enough for outputs that need only lib).
flake=$work/flake
mkdir -p "$flake/tests"
cp -R flake.nix flake.lock nix darwin-modules Cargo.toml Cargo.lock "$flake/"
cp -R tests/nix "$flake/tests/"
nix flake metadata --option substituters '' --no-update-lock-file "path:$flake" >/dev/null
echo "ok: flake.lock resolves offline (nix flake metadata)"
modules=$(nix eval --option substituters '' --no-write-lock-file \
  --override-input nixpkgs "path:$NL" --apply builtins.attrNames --json \
  "path:$flake#darwinModules" 2>/dev/null)
[ "$modules" = '["default","gitlab-runner-tart"]' ] || {
  echo "eval-local: darwinModules is $modules" >&2
  exit 1
}
echo "ok: flake outputs evaluate (darwinModules: $modules)"
echo "eval-local: all passed"
