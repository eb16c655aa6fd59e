#!/usr/bin/env bash
# The nix-darwin module evaluated the way nix-darwin builds a system, offline:
#   1. the pinned sources (git archives of nix-darwin and nixpkgs.lib, in shared/vendor/ beside
#      the clone, or $TART_DRIVER_VENDOR) are checked against flake.lock: nix-darwin's rev,
#      lastModified and narHash are recomputed from its archive;
#   2. tests/nix/eval.nix (with eval-host.nix) evaluates the module through nix-darwin's
#      eval-config.nix (with a stand-in pkgs) for the README's quick start and the other
#      configurations it lists, and checks plists, scripts, spec, assertions and switch
#      behaviour;
#   3. each configuration's whole `activate` script passes shellcheck with nix-darwin's flags
#      (modules/system/default.nix: `shellcheck --exclude=SC2016,SC1112`);
#   4. the runner agent's script stops gitlab-runner gracefully, the agents and a switch
#      refuse a user whose home in the user database is not the one the module uses, and
#      activation's steps (the agent's generation, the host directories) do what they say
#      (run with stand-ins);
#   5. the evaluated spec renders with the real `runner-config`, and the driver loads the
#      rendered driver configs (when target/debug/gitlab-runner-tart-driver exists);
#   6. the flake's lock resolves offline and its outputs evaluate.
# Needs nix-bin and ShellCheck 0.11 (tests/nix/shellcheck.sh says which binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
export NIX_CONFIG='experimental-features = nix-command flakes
build-users-group ='
# shellcheck source-path=SCRIPTDIR/../..
. tests/nix/shellcheck.sh

vendor=${TART_DRIVER_VENDOR:-}
if [ -z "$vendor" ]; then
  for d in "$repo/../shared/vendor" "$repo/../../shared/vendor"; do
    if [ -d "$d" ]; then vendor=$(cd "$d" && pwd) && break; fi
  done
fi
[ -n "$vendor" ] || {
  echo "module-eval: no shared/vendor beside the clone; set TART_DRIVER_VENDOR" >&2
  exit 1
}
ND_ARCHIVE=$vendor/nix-darwin-adda04f0.tar.gz
NL_ARCHIVE=$vendor/nixpkgs-lib-de42d442.tar.gz
NL_HASH=sha256-0iaTCZDEORJeWamOjfDZaoZZx686f7QO5oL3ynmj+ew=

work=$(mktemp -d)
sim_pid=
# shellcheck disable=SC2317,SC2329 # run by the trap below
cleanup() {
  if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Unpacks archive $1 as $work/$2/source; prints the directory.
unpack() {
  mkdir -p "$work/$2/source"
  tar -xzf "$1" -C "$work/$2/source"
  echo "$work/$2/source"
}
nd_src=$(unpack "$ND_ARCHIVE" nix-darwin)
nl_src=$(unpack "$NL_ARCHIVE" nixpkgs.lib)

# 1. flake.lock against the archive. `git archive` records the commit in the archive and
# gives every file the commit's time, which is what a lock's lastModified is.
# Prints a line per field of lock file $1's nix-darwin node that the archive contradicts.
lock_mismatches() {
  local lock=$1 rev mtime hash
  rev=$(gzip -dc "$ND_ARCHIVE" | git get-tar-commit-id)
  mtime=$(stat -c %Y "$nd_src/flake.nix")
  hash=$(nix hash path "$nd_src")
  nix-instantiate --eval --strict --json -E "
    let
      l = (builtins.fromJSON (builtins.readFile $lock)).nodes.nix-darwin.locked;
      want = { rev = \"$rev\"; lastModified = $mtime; narHash = \"$hash\"; };
    in builtins.filter (k: l.\${k} != want.\${k}) (builtins.attrNames want)" | tr -d '[]"' | tr , '\n'
}
bad=$(lock_mismatches "$repo/flake.lock")
[ -z "$bad" ] || {
  echo "module-eval: flake.lock's nix-darwin node disagrees with $ND_ARCHIVE on: $bad" >&2
  exit 1
}
# The check fails on a wrong value (a lock edited by hand, or an archive of another commit).
for field in narHash lastModified rev; do
  case $field in
    narHash) edit='s|"narHash": "sha256-xIbR|"narHash": "sha256-AIbR|' ;;
    lastModified) edit='s|"lastModified": 1781772065|"lastModified": 1781772066|' ;;
    rev) edit='s|"rev": "adda04f0|"rev": "bdda04f0|' ;;
  esac
  sed "$edit" flake.lock >"$work/flake.lock.bad"
  [ "$(lock_mismatches "$work/flake.lock.bad")" = "$field" ] || {
    echo "module-eval: the lock check does not notice a wrong $field" >&2
    exit 1
  }
done
got=$(nix hash path "$nl_src")
[ "$got" = "$NL_HASH" ] || {
  echo "module-eval: $NL_ARCHIVE has narHash $got, expected $NL_HASH" >&2
  exit 1
}
ND=$(nix-store --add "$nd_src")
NL=$(nix-store --add "$nl_src")
echo "ok: flake.lock's nix-darwin rev, lastModified and narHash match the archive ($ND)"

# 2. The README's quick start, exactly as shown: the first ```nix block.
awk '/^ *```nix$/ && !done { on = 1; next } on && /^ *```$/ { on = 0; done = 1 } on' README.md \
  >"$work/readme-quick-start.nix"
grep -q 'services.gitlab-runner-tart' "$work/readme-quick-start.nix" || {
  echo "module-eval: no nix-darwin quick start (\`\`\`nix block) in README.md" >&2
  exit 1
}

token=glrt-TEST-$RANDOM$RANDOM-never-in-the-store
tokens=$work/tokens
mkdir -p "$tokens"
printf '%s\n' "$token" >"$tokens/macos.token"
printf '%s\n' "$token" >"$tokens/linux.token"
chmod 600 "$tokens"/*.token

expr="import $repo/tests/nix/eval.nix {
  lib = import $NL/lib; nix-darwin = $ND; tokenDir = \"$tokens\"; token = \"$token\";
  readmeQuickStart = $work/readme-quick-start.nix; }"
result=$(nix-instantiate --read-write-mode --eval --strict -E "
  let r = $expr; in
  if r.failures == [ ] then r.passed
  else throw \"failed: \${builtins.concatStringsSep \"; \" r.failures}\"")
echo "ok: module evaluation through eval-config.nix ($result checks)"

# 3. Each configuration's whole activate script, shellchecked as nix-darwin does.
names=$(nix eval --raw --impure --expr "builtins.concatStringsSep \" \" (builtins.attrNames ($expr).activateScripts)")
for name in $names; do
  nix eval --raw --impure --expr "($expr).activateScripts.\"$name\"" >"$work/activate-$name"
  if ! "$shellcheck" --exclude=SC2016,SC1112 "$work/activate-$name"; then
    echo "module-eval: nix-darwin's shellcheck fails the activate script of: $name" >&2
    exit 1
  fi
done
echo "ok: shellcheck $("$shellcheck" --version | sed -n 's/^version: //p') --exclude=SC2016,SC1112 passes every activate script ($names)"

# 4. The runner agent stops gitlab-runner gracefully, passes shellcheck, and a switch's
# activation hands it a new generation without waiting.
nix eval --raw --impure --expr "($expr).agentScriptText" >"$work/agent.sh"
"$shellcheck" "$work/agent.sh" || {
  echo "module-eval: shellcheck fails the runner agent's script" >&2
  exit 1
}
for script in configScriptText gcScript logsScript; do
  nix eval --raw --impure --expr "($expr).$script" >"$work/$script.sh"
  "$shellcheck" "$work/$script.sh" || {
    echo "module-eval: shellcheck fails the agent script $script" >&2
    exit 1
  }
done
tests/nix/agent-stop.sh
# The agents and a switch refuse a user whose home in the user database is not the one used.
tests/nix/agent-home.sh
TART_MODULE_EVAL=$expr tests/nix/agent-activation.sh
# The host directories, the user's home first when it is missing.
tests/nix/host-dirs.sh

# 5. The rendered spec, through the real runner-config, gives a config.toml whose
# `concurrent` equals every runner's --concurrency.
nix eval --raw --impure --expr "($expr).specText" >"$work/spec.json"
driver=${TART_DRIVER_BIN:-$repo/target/debug/gitlab-runner-tart-driver}
if [ -x "$driver" ] && "$driver" runner-config --help >/dev/null 2>&1; then
  "$driver" runner-config --spec "$work/spec.json" --output "$work/config.toml"
  mode=$(stat -c %a "$work/config.toml" 2>/dev/null || stat -f %Lp "$work/config.toml")
  [ "$mode" = 600 ] || {
    echo "module-eval: config.toml has mode $mode, not 600" >&2
    exit 1
  }
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
  # The driver accepts the rendered YAML: `gc --dry-run` loads and validates it, then lists
  # VMs with a stand-in Tart (the YAML names Tart's store path, absent here) and must exit 0.
  cat >"$work/tart" <<'SH'
#!/bin/sh
case "$1" in list) echo "[]" ;; esac
SH
  chmod +x "$work/tart"
  loads() {
    HOME=$work/home "$driver" gc --dry-run --config "$1" --tart-executable "$work/tart" \
      >"$work/gc.out" 2>&1
  }
  for r in macos linux; do
    nix eval --raw --impure --expr "($expr).yamlTexts.$r" >"$work/$r.yaml"
    loads "$work/$r.yaml" || {
      echo "module-eval: the driver refuses the rendered $r.yaml:" >&2
      cat "$work/gc.out" >&2
      exit 1
    }
  done
  # ... and the check notices a config the driver refuses.
  sed 's/"concurrency":/"concurency":/' "$work/macos.yaml" >"$work/bad.yaml"
  if loads "$work/bad.yaml"; then
    echo "module-eval: gc --dry-run accepts a YAML with an unknown key; the check above proves nothing" >&2
    exit 1
  fi
  echo "ok: the driver loads the rendered driver configs (gc --dry-run exits 0)"
  # With a warm pool (keys a driver without the pool refuses).
  if "$driver" --help | grep -q '^  warm '; then
    nix eval --raw --impure --expr "($expr).warmYamlText" >"$work/warm.yaml"
    loads "$work/warm.yaml" || {
      echo "module-eval: the driver refuses the rendered warm-pool config:" >&2
      cat "$work/gc.out" >&2
      exit 1
    }
    echo "ok: the driver loads a rendered driver config with a warm pool"
  else
    echo "SKIP: the rendered warm-pool config was not loaded: this driver has no warm pool"
  fi
else
  echo "module-eval: no driver binary with runner-config at $driver; run cargo build first" >&2
  exit 1
fi

# 6. The NixOS module (Orchard runners on Linux) through lib.evalModules with stand-ins for
# the NixOS options it sets (tests/nix/nixos-eval.nix says which); ShellCheck passes its
# runner script, and its spec renders with the real runner-config.
printf '%s\n' "$token" >"$tokens/gitlab.token"
printf '%s\n' "orchard-$token" >"$tokens/orchard.token"
chmod 600 "$tokens"/*.token
nixos="import $repo/tests/nix/nixos-eval.nix {
  lib = import $NL/lib; tokenDir = \"$tokens\"; token = \"$token\"; }"
result=$(nix-instantiate --read-write-mode --eval --strict -E "
  let r = $nixos; in
  if r.failures == [ ] then r.passed
  else throw \"failed: \${builtins.concatStringsSep \"; \" r.failures}\"")
echo "ok: NixOS module evaluation with lib.evalModules and stand-in NixOS options ($result checks)"
nix eval --raw --impure --expr "($nixos).runnerScriptText" >"$work/nixos-runner.sh"
"$shellcheck" "$work/nixos-runner.sh" || {
  echo "module-eval: shellcheck fails the NixOS runner script" >&2
  exit 1
}
nix eval --raw --impure --expr "($nixos).specText" >"$work/nixos-spec.json"
"$driver" runner-config --spec "$work/nixos-spec.json" --output "$work/nixos-config.toml" >/dev/null
nix-instantiate --eval --strict -E "
  let c = builtins.fromTOML (builtins.readFile $work/nixos-config.toml); in
  if c.concurrent == 6 && builtins.all (r: r.token == \"$token\") c.runners then true
  else throw \"the NixOS config.toml does not match its spec\"" >/dev/null
echo "ok: the NixOS spec renders (concurrent = the fleet's capacity, 6; the token from its file)"
nix eval --raw --impure --expr "($nixos).yamlText" >"$work/orchard.yaml"
# The driver loads the rendered Orchard config and, with it, talks to a controller: the
# fake one (orchard-sim, HTTPS with a fresh certificate), trusted by the fingerprint and
# authenticated by the token file the module names; a wrong token in that file fails.
if "$driver" gc --help | grep -q -- '--backend'; then
  sim=${ORCHARD_SIM_BIN:-$repo/target/debug/orchard-sim}
  [ -x "$sim" ] || {
    echo "module-eval: no orchard-sim at $sim; run cargo build -p orchard-sim first" >&2
    exit 1
  }
  cat >"$work/orchard-sim.json" <<JSON
{"listen": "127.0.0.1:0", "tls": true, "workers": [{"name": "mac-1"}],
 "accounts": [{"name": "gitlab-runner", "token": "orchard-$token",
               "roles": ["compute:read", "compute:write"]}]}
JSON
  "$sim" "$work/orchard-sim.json" >"$work/orchard-sim.out" 2>"$work/orchard-sim.err" &
  sim_pid=$!
  for _ in $(seq 100); do
    [ -s "$work/orchard-sim.out" ] && break
    sleep 0.1
  done
  sim_field() {
    python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' \
      "$work/orchard-sim.out" "$1"
  }
  if ! sim_url=$(sim_field url) || ! sim_fp=$(sim_field fingerprint); then
    echo "module-eval: orchard-sim did not start:" >&2
    cat "$work/orchard-sim.err" >&2
    exit 1
  fi
  nix eval --raw --impure --expr "(import $repo/tests/nix/nixos-eval.nix {
    lib = import $NL/lib; tokenDir = \"$tokens\"; token = \"$token\";
    orchardUrl = \"$sim_url\"; orchardFingerprint = \"$sim_fp\"; }).yamlText" >"$work/orchard.yaml"
  orchard_gc() { HOME=$work/home "$driver" gc --dry-run --config "$work/orchard.yaml" >"$work/gc.out" 2>&1; }
  orchard_gc || {
    echo "module-eval: the driver cannot use the rendered Orchard config:" >&2
    cat "$work/gc.out" >&2
    exit 1
  }
  printf 'wrong\n' >"$tokens/orchard.token"
  if orchard_gc; then
    echo "module-eval: gc --dry-run succeeds with a wrong Orchard token; the check above proves nothing" >&2
    exit 1
  fi
  kill "$sim_pid" && wait "$sim_pid" 2>/dev/null || true
  sim_pid=
  echo "ok: the driver uses the rendered Orchard config against a controller (gc --dry-run: token file, pinned fingerprint)"
else
  echo "SKIP: the rendered Orchard driver config was not loaded: this driver has no Orchard backend (--backend)"
fi

# 7. Offline flake checks: the lock resolves from the seeded store, and outputs evaluate
# with nixpkgs replaced by nixpkgs.lib (enough for outputs that need only lib).
flake=$work/flake
mkdir -p "$flake/tests"
cp -R flake.nix flake.lock nix darwin-modules nixos-modules Cargo.toml Cargo.lock "$flake/"
cp -R tests/nix "$flake/tests/"
nix flake metadata --option substituters '' --no-update-lock-file "path:$flake" >/dev/null
echo "ok: flake.lock resolves offline (nix flake metadata)"
modules=$(nix eval --option substituters '' --no-write-lock-file \
  --override-input nixpkgs "path:$NL" --apply builtins.attrNames --json \
  "path:$flake#darwinModules" 2>/dev/null)
[ "$modules" = '["default","gitlab-runner-tart"]' ] || {
  echo "module-eval: darwinModules is $modules" >&2
  exit 1
}
nixos_modules=$(nix eval --option substituters '' --no-write-lock-file \
  --override-input nixpkgs "path:$NL" --apply builtins.attrNames --json \
  "path:$flake#nixosModules" 2>/dev/null)
[ "$nixos_modules" = '["default","orchard"]' ] || {
  echo "module-eval: nixosModules is $nixos_modules" >&2
  exit 1
}
echo "ok: flake outputs evaluate (darwinModules: $modules, nixosModules: $nixos_modules)"
echo "module-eval: all passed"
