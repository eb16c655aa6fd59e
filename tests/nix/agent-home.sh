#!/usr/bin/env bash
# The agents run only when the HOME the module exports is the user's home in the user
# database, where Tart (and the driver) find Tart's home (darwin-modules/agent.nix
# `homeCheck`), and a switch stops before activation when an existing user's home differs
# (`switchCheck`). Run with a stand-in `dscl` that prints what macOS's prints for
# `dscl . -read /Users/ci NFSHomeDirectory`, and stand-ins for the driver and gitlab-runner
# that log their calls:
# - a user nix-darwin created without `home` (/var/empty): the runner's script exits non-zero
#   with one line naming both homes and the fix, and neither renders config.toml nor starts
#   gitlab-runner; the gc agent's script does not sweep;
# - the same home: the runner starts; so it does for a home with a space (dscl prints such a
#   value on a line of its own);
# - no home in the user database: the script refuses;
# - another user runs the script (a former primary user's copy of the agent): it refuses;
# - a switch: an existing user with another home stops it, and so does one whose home dscl
#   cannot read (with its message: activation runs under `set -e` and `pipefail`); a
#   matching one, or a user nix-darwin has yet to create, does not.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"

# dscl . -read /Users/ci NFSHomeDirectory: prints $work/dscl-out, or fails as dscl does for
# an unknown record when it is missing; any other call fails loudly.
cat >"$work/bin/dscl" <<SH
#!/usr/bin/env bash
if [ "\$*" != ". -read /Users/ci NFSHomeDirectory" ]; then
  echo "stand-in dscl: unexpected call: \$*" >&2
  exit 2
fi
if [ -e "$work/dscl-out" ]; then cat "$work/dscl-out"; exit 0; fi
echo "<dscl_cmd> DS Error: -14136 (eDSRecordNotFound)" >&2
exit 56
SH
# id -u -- ci: succeeds when $work/user-exists exists; id -un: the user running the script,
# ci unless $work/whoami says another.
cat >"$work/bin/id" <<SH
#!/usr/bin/env bash
if [ "\$1" = -un ]; then cat "$work/whoami" 2>/dev/null || echo ci; exit 0; fi
[ -e "$work/user-exists" ] && echo 550
SH
cat >"$work/driver" <<SH
#!/usr/bin/env bash
echo "driver \$*" >>"$work/calls"
touch "\$5"
SH
cat >"$work/gitlab-runner" <<SH
#!/usr/bin/env bash
echo "gitlab-runner \$1" >>"$work/calls"
SH
chmod +x "$work/bin/"* "$work/driver" "$work/gitlab-runner"

# Prints the Nix string expression $1 evaluated.
text() {
  nix-instantiate --eval --strict --json -E "$1" 2>/dev/null \
    | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))'
}
agent='(import ./darwin-modules/agent.nix)'
# The runner's script for home $1 (a directory under $work) and the gc agent's.
scripts() {
  local home=$1
  mkdir -p "$home"
  text "$agent.script {
    shell = \"$(command -v bash)\"; driver = \"$work/driver\";
    gitlabRunner = \"$work/gitlab-runner\"; specFile = \"$work/spec.json\";
    configFile = \"$home/.gitlab-runner/config.toml\"; stateDir = \"$home/.gitlab-runner\";
    logFile = \"$home/logs/gitlab-runner.log\"; home = \"$home\";
    path = [ \"$work/bin\" \"/usr/bin\" \"/bin\" ]; drainTimeout = 30;
    generationFile = \"$work/agent-generation\"; user = \"ci\"; }" >"$work/runner"
  text "$agent.periodicScript {
    shell = \"$(command -v bash)\"; path = [ \"$work/bin\" \"/usr/bin\" \"/bin\" ];
    home = \"$home\"; stateDir = \"$home/.gitlab-runner\"; user = \"ci\";
    logFile = \"$home/logs/gc.log\"; body = \"echo swept >>$work/calls\n\"; }" >"$work/gc"
}

fail=0
expect() {
  if [ "$2" = "$3" ]; then
    echo "ok: $1"
  else
    echo "FAIL: $1: got '$2', want '$3'" >&2
    fail=1
  fi
}
# Runs script $1; prints its exit status and the calls it made to the stand-ins.
run() {
  : >"$work/calls"
  local status=0
  bash "$work/$1" >"$work/out" 2>&1 </dev/null || status=$?
  echo "$status $(tr '\n' ';' <"$work/calls")"
}

home=$work/Users/ci
scripts "$home"
printf 'NFSHomeDirectory: /var/empty\n' >"$work/dscl-out"
expect "a user created with /var/empty: the runner's script refuses before rendering or running anything" \
  "$(run runner)" "1 "
want="gitlab-runner-tart: ci's home directory in the user database is /var/empty (where Tart keeps its VMs), but this configuration uses $home; not running: give ci the home $home (sudo dscl . -create /Users/ci NFSHomeDirectory $home, then log in again) or set users.users.ci.home = \"/var/empty\", and switch again"
expect "... and says why in one line of its log, naming both homes and the fix" \
  "$(cat "$home/logs/gitlab-runner.log")" "$want"
expect "a user created with /var/empty: the gc agent does not sweep" "$(run gc)" "1 "
expect "... and says why in its log" "$(cat "$home/logs/gc.log")" "$want"

printf 'NFSHomeDirectory: %s\n' "$home" >"$work/dscl-out"
expect "the home in the user database: the runner renders config.toml and starts" \
  "$(run runner | sed "s|$work|W|g")" \
  "0 driver runner-config --spec W/spec.json --output W/Users/ci/.gitlab-runner/config.toml;gitlab-runner run;"
expect "the home in the user database: the gc agent sweeps" "$(run gc)" "0 swept;"

spaced="$work/Users/c i"
scripts "$spaced"
printf 'NFSHomeDirectory:\n %s\n' "$spaced" >"$work/dscl-out"
expect "a home with a space (dscl prints it on a line of its own): the runner starts" \
  "$(run runner | sed 's/ driver.*gitlab-runner run;/ started/')" "0 started"

rm -f "$work/dscl-out"
scripts "$home"
expect "no home in the user database: the runner's script refuses" "$(run runner)" "1 "
grep -q "cannot read ci's home directory from the user database" "$home/logs/gitlab-runner.log" || {
  echo "FAIL: no message about the unreadable home" >&2
  fail=1
}

printf 'NFSHomeDirectory: %s\n' "$home" >"$work/dscl-out"
echo admin >"$work/whoami"
expect "another user runs the runner's script: it refuses before rendering or running anything" \
  "$(run runner)" "1 "
grep -q "this agent runs as admin, but the module's runner user is ci" "$home/logs/gitlab-runner.log" || {
  echo "FAIL: no message about the user running the script" >&2
  fail=1
}
expect "another user runs the gc agent's script: it does not sweep" "$(run gc)" "1 "
rm -f "$work/whoami" "$work/dscl-out"

# A switch: nix-darwin's checks, before activation changes anything.
text "$agent.switchCheck { user = \"ci\"; home = \"/Users/ci\"; }" >"$work/check"
switch() {
  local status=0
  PATH="$work/bin:$PATH" bash -euo pipefail "$work/check" >"$work/out" 2>&1 || status=$?
  echo "$status"
}
touch "$work/user-exists"
printf 'NFSHomeDirectory: /var/empty\n' >"$work/dscl-out"
expect "a switch with an existing user whose home is another: stops" "$(switch)" 1
grep -q "is /var/empty (where Tart keeps its VMs), but this configuration uses /Users/ci; stopping the switch" "$work/out" || {
  echo "FAIL: the switch does not say why it stops" >&2
  cat "$work/out" >&2
  fail=1
}
printf 'NFSHomeDirectory: /Users/ci\n' >"$work/dscl-out"
expect "a switch with an existing user whose home is the one used: goes on" "$(switch)" 0
rm -f "$work/dscl-out"
expect "a switch with an existing user whose home dscl cannot read: stops" "$(switch)" 1
grep -q "cannot read ci's home directory from the user database.*; stopping the switch" "$work/out" || {
  echo "FAIL: the switch stops without saying why" >&2
  cat "$work/out" >&2
  fail=1
}
rm -f "$work/user-exists"
expect "a switch that creates the user (not there yet): goes on" "$(switch)" 0
exit "$fail"
