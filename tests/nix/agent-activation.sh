#!/usr/bin/env bash
# What a switch's activation does to the runner's agent (darwin-modules/agent.nix
# `activation`), run with a stand-in `launchctl`, `id` and `sudo` that log their calls:
# - the agent runs another generation: SIGTERM to it (its script drains gitlab-runner) and
#   nothing else; the switch does not wait;
# - the agent runs this generation, or has not recorded one yet (just loaded): nothing;
# - the agent is not loaded (an earlier reload failed): it is loaded, as nix-darwin would;
# - the user has no GUI session: a message saying to log in, and no launchctl load or kill;
# - before nix-darwin loads agents (`prepare`): a record left by an agent that is not loaded
#   is removed, one of a loaded agent kept;
# - a host upgrading from the layout that kept the record in stateDir: the running agent's
#   record there is read once (the /var/db one is missing) and removed, and the agent drains;
# - a switch that moves stateDir, with the texts of the module evaluated through nix-darwin
#   ($TART_MODULE_EVAL, set by module-eval.sh): the new activation finds the running agent's
#   record and drains it.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/db" "$work/state"

# launchctl print gui/501[/label] succeeds per $work/gui and $work/loaded; every call is logged.
cat >"$work/bin/launchctl" <<SH
#!/usr/bin/env bash
echo "launchctl \$*" >>"$work/calls"
case "\$1 \$2" in
  "print gui/501") [ -e "$work/gui" ] ;;
  "print gui/501/org.nixos.gitlab-runner-tart") [ -e "$work/loaded" ] ;;
  *) exit 0 ;;
esac
SH
cat >"$work/bin/id" <<'SH'
#!/usr/bin/env bash
echo 501
SH
cat >"$work/bin/sudo" <<SH
#!/usr/bin/env bash
echo "sudo \$*" >>"$work/calls"
SH
cat >"$work/bin/chown" <<SH
#!/usr/bin/env bash
echo "chown \$*" >>"$work/calls"
SH
chmod +x "$work/bin/"*

# Prints agent.nix's snippet $1 (activation or prepare) with the record in $work/db.
snippet_of() {
  nix-instantiate --eval --strict --json -E "
    (import ./darwin-modules/agent.nix).$1 ({ user = \"ci\"; record = \"$work/db/agent-generation\";
      legacyRecord = \"$work/state/.tart-agent-generation\"; }
      // (if \"$1\" == \"activation\" then {
        home = \"/Users/ci\"; drainTimeout = 600; generation = \"new\"; } else { }))" 2>/dev/null \
    | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))'
}
activation=$(snippet_of activation)
prepare=$(snippet_of prepare)

# Runs snippet $2 (default: the activation) in state $1 (space-separated: gui, loaded,
# running=<generation>, the agent's record; legacy=<generation>, its record in stateDir);
# prints the launchctl/sudo calls that change
# something (not the `print` queries, not chown) and the output.
activate() {
  rm -f "$work/gui" "$work/loaded" "$work/calls" "$work/db/agent-generation" \
    "$work/state/.tart-agent-generation"
  for s in $1; do
    case $s in
      gui) touch "$work/gui" ;;
      loaded) touch "$work/loaded" ;;
      running=*) echo "${s#running=}" >"$work/db/agent-generation" ;;
      legacy=*) echo "${s#legacy=}" >"$work/state/.tart-agent-generation" ;;
    esac
  done
  PATH="$work/bin:$PATH" bash -euo pipefail -c "${2:-$activation}" >"$work/out" 2>&1
  { grep -v '^launchctl print\|^chown' "$work/calls" || true; } | tr '\n' ';'
}

fail=0
expect() {
  local what=$1 got=$2 want=$3
  if [ "$got" = "$want" ]; then
    echo "ok: $what"
  else
    echo "FAIL: $what: got '$got', want '$want'" >&2
    cat "$work/out" >&2
    fail=1
  fi
}
expect "an agent of another generation is told to drain, once" \
  "$(activate 'gui loaded running=old')" \
  "launchctl kill SIGTERM gui/501/org.nixos.gitlab-runner-tart;"
grep -q 'once its running jobs finish' "$work/out" || {
  echo "FAIL: the drain is not announced" >&2
  fail=1
}
expect "an agent of this generation is left alone" "$(activate 'gui loaded running=new')" ""
expect "an agent just loaded, before it records its generation, is left alone" \
  "$(activate 'gui loaded')" ""
expect "an agent left unloaded by an earlier switch is loaded" "$(activate 'gui')" \
  "launchctl asuser 501 sudo --user=ci -- launchctl load -w /Users/ci/Library/LaunchAgents/org.nixos.gitlab-runner-tart.plist;"
expect "without a GUI session nothing is loaded or signalled" "$(activate 'running=old')" ""
grep -q 'ci has no GUI login session.*log in as ci' "$work/out" || {
  echo "FAIL: no message about the missing GUI session" >&2
  fail=1
}

expect "an agent of the earlier layout (its record in stateDir) is told to drain" \
  "$(activate 'gui loaded legacy=old')" \
  "launchctl kill SIGTERM gui/501/org.nixos.gitlab-runner-tart;"
expect "... and its record is removed, so that it is read once" \
  "$([ -e "$work/state/.tart-agent-generation" ] && echo kept || echo removed)" removed
expect "the record in /var/db wins over one left in stateDir" \
  "$(activate 'gui loaded running=new legacy=old')" ""

# Before nix-darwin loads agents.
activate 'gui running=old' "$prepare" >/dev/null
expect "prepare: the record of an agent that is not loaded (killed, never restarted) is removed" \
  "$([ -e "$work/db/agent-generation" ] && echo kept || echo removed)" removed
activate 'gui legacy=old' "$prepare" >/dev/null
expect "prepare: the stateDir record of an agent that is not loaded is removed" \
  "$([ -e "$work/state/.tart-agent-generation" ] && echo kept || echo removed)" removed
activate 'gui loaded running=old' "$prepare" >/dev/null
expect "prepare: the record of a loaded agent is kept" "$(cat "$work/db/agent-generation")" old
expect "prepare: the record's directory is made the user's" \
  "$(grep '^chown' "$work/calls")" "chown -- ci:501 $work/db"

# A switch that moves stateDir, as the module renders it.
if [ -z "${TART_MODULE_EVAL:-}" ]; then
  echo "FAIL: TART_MODULE_EVAL is not set (tests/nix/module-eval.sh sets it); the switch that moves stateDir was not tried" >&2
  exit 1
fi
switch() { nix eval --raw --impure --expr "($TART_MODULE_EVAL).stateMovedSwitch.$1"; }
# Prints the module's block that starts with comment line $1, up to its closing `)`: only
# that part of nix-darwin's activation text is run here.
block() { awk -v m="$1" '$0 == m { on = 1 } on { print } on && $0 == ")" { exit }'; }
switch runningAgent >"$work/running-agent"
# The files the scripts name live under $work/root.
root=$work/root
switch prepare | block "# gitlab-runner-tart: the runner's generation record" \
  | sed "s|'/|'$root/|g" >"$work/switch-prepare"
switch activation | block "# gitlab-runner-tart: the runner's agent takes up this generation" \
  | sed "s|cat '/|cat '$root/|g" >"$work/switch-activation"
# The running agent (the old stateDir) recorded its generation where its script says.
generation=$(sed -n 's/^generation=//p' "$work/running-agent")
record=$(sed -n "s/^printf '%s\\\\n' \"\\\$generation\" >'\([^']*\)'.*/\1/p" "$work/running-agent")
if [ -z "$generation" ] || [ -z "$record" ]; then
  echo "FAIL: no generation or record path in the running agent's script" >&2
  exit 1
fi
rm -f "$work/calls"
touch "$work/gui" "$work/loaded"
mkdir -p "$root$(dirname "$record")"
echo "$generation" >"$root$record"
PATH="$work/bin:$PATH" bash -euo pipefail "$work/switch-prepare" >"$work/out" 2>&1
PATH="$work/bin:$PATH" bash -euo pipefail "$work/switch-activation" >>"$work/out" 2>&1
expect "a switch that moves stateDir drains the running agent (of the old stateDir)" \
  "$({ grep -v '^launchctl print\|^chown' "$work/calls" || true; } | tr '\n' ';')" \
  "launchctl kill SIGTERM gui/501/org.nixos.gitlab-runner-tart;"
exit "$fail"
