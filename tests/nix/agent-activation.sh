#!/usr/bin/env bash
# What a switch's activation does to the runner's agent (darwin-modules/agent.nix
# `activation`), run with a stand-in `launchctl`, `id` and `sudo` that log their calls:
# - the agent runs another generation: SIGTERM to it (its script drains gitlab-runner) and
#   nothing else; the switch does not wait;
# - the agent runs this generation, or has not recorded one yet (just loaded): nothing;
# - the agent is not loaded (an earlier reload failed): it is loaded, as nix-darwin would;
# - the user has no GUI session: a message saying to log in, and no launchctl load or kill.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/state"

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
chmod +x "$work/bin/"*

snippet=$(nix-instantiate --eval --strict --json -E "
  (import ./darwin-modules/agent.nix).activation {
    user = \"ci\"; home = \"/Users/ci\"; stateDir = \"$work/state\";
    drainTimeout = 600; generation = \"new\"; }" 2>/dev/null \
  | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))')

# Runs the snippet in state $1 (space-separated: gui, loaded, running=<generation>); prints
# the launchctl/sudo calls that change something (not the `print` queries) and the output.
activate() {
  rm -f "$work/gui" "$work/loaded" "$work/calls" "$work/state/.tart-agent-generation"
  for s in $1; do
    case $s in
      gui) touch "$work/gui" ;;
      loaded) touch "$work/loaded" ;;
      running=*) echo "${s#running=}" >"$work/state/.tart-agent-generation" ;;
    esac
  done
  PATH="$work/bin:$PATH" bash -euo pipefail -c "$snippet" >"$work/out" 2>&1
  { grep -v '^launchctl print' "$work/calls" || true; } | tr '\n' ';'
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
exit "$fail"
