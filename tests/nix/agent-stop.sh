#!/usr/bin/env bash
# What the runner's launch agent does when launchd stops it (at logout, or when a switch
# replaces its plist): launchd sends SIGTERM, which gitlab-runner takes as "abort every job".
# The agent's script (darwin-modules/agent.nix `script`) must pass SIGQUIT instead (no
# new jobs, running jobs finish), and SIGTERM only once the drain time is over. Runs that
# script with stand-ins for the driver and gitlab-runner that log the signals they get.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
agent_pid=
# shellcheck disable=SC2329 # invoked by the trap below
cleanup() {
  if [ -n "$agent_pid" ]; then kill -KILL -- "-$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/driver" <<'SH'
#!/usr/bin/env bash
# runner-config --spec S --output O: writes O.
touch "$5"
SH
# A gitlab-runner whose running job takes $JOB_SECONDS after SIGQUIT; SIGTERM aborts it.
cat >"$work/gitlab-runner" <<SH
#!/usr/bin/env bash
log=$work/signals
trap 'echo QUIT >>"\$log"; quit=1' QUIT
trap 'echo TERM >>"\$log"; exit 1' TERM
quit=0
echo started >>"\$log"
while :; do
  sleep 0.1
  if [ "\$quit" = 1 ]; then
    left=\$(cat "$work/job-tenths")
    [ "\$left" -gt 0 ] || exit 0
    echo \$((left - 1)) >"$work/job-tenths"
  fi
done
SH
chmod +x "$work/driver" "$work/gitlab-runner"

# Runs the agent with drain time $1 and a job needing $2 tenths of a second after SIGQUIT;
# stops it like launchd; prints the signals gitlab-runner got and the agent's exit status.
stop_agent() {
  local drain=$1 job=$2 script status
  rm -f "$work/signals" "$work/record-while-running"
  mkdir -p "$work/db"
  echo "$job" >"$work/job-tenths"
  script=$(nix-instantiate --eval --strict --json -E "
    (import ./darwin-modules/agent.nix).script {
      shell = \"$(command -v bash)\"; driver = \"$work/driver\";
      gitlabRunner = \"$work/gitlab-runner\"; specFile = \"$work/spec.json\";
      configFile = \"$work/state/config.toml\"; stateDir = \"$work/state\";
      logFile = \"$work/logs/gitlab-runner.log\"; home = \"$work\";
      path = [ \"/usr/bin\" \"/bin\" ]; drainTimeout = $drain;
      generationFile = \"$work/db/agent-generation\"; }" 2>/dev/null)
  printf '%s' "$script" | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))' >"$work/agent"
  # As launchd starts it: in a process group of its own (launchd's, whose processes are
  # the agent's), no signal ignored (a script's background command has SIGQUIT and SIGINT
  # ignored, and a shell cannot undo what it inherits ignored). The subshell is no group
  # leader, so setsid makes the agent's pid its group's id.
  (
    trap - QUIT INT
    exec setsid bash "$work/agent"
  ) &
  agent_pid=$!
  for _ in $(seq 100); do
    grep -q started "$work/signals" 2>/dev/null && break
    sleep 0.1
  done
  cp "$work/db/agent-generation" "$work/record-while-running" 2>/dev/null || true
  kill -TERM "$agent_pid"
  status=0
  wait "$agent_pid" || status=$?
  # What is left of the agent's process group once the agent is gone (the drain timer and
  # its sleep included): nothing may be.
  left=$(ps -e -o pgid=,pid=,args= | awk -v g="$agent_pid" '$1 == g { $1 = ""; print }')
  if [ -n "$left" ]; then
    kill -KILL -- "-$agent_pid" 2>/dev/null || true
    echo "left:$(echo "$left" | tr '\n' ';') "
  fi
  agent_pid=
  echo "$(grep -v started "$work/signals" | tr '\n' ' ')exit $status"
}

fail=0
got=$(stop_agent 30 5 | tr '\n' ' ' | sed 's/ $//')
if [ "$got" = "QUIT exit 0" ]; then
  echo "ok: launchd's SIGTERM reaches gitlab-runner as SIGQUIT; the running job finishes; no process of the agent (drain timer included) is left"
else
  echo "FAIL: a job that finishes within the drain time: got '$got', want 'QUIT exit 0'" >&2
  cat "$work/logs/gitlab-runner.log" >&2
  fail=1
fi
# The running script told activation which generation it is (agent-activation.sh), and
# took the record back when it stopped.
want=$(sed -n 's/^generation=//p' "$work/agent")
if [ -n "$want" ] && [ "$(cat "$work/record-while-running")" = "$want" ]; then
  echo "ok: the running agent records its generation"
else
  echo "FAIL: the running agent did not record generation '$want' in $work/db/agent-generation" >&2
  fail=1
fi
if [ ! -e "$work/db/agent-generation" ]; then
  echo "ok: the stopped agent's generation record is gone"
else
  echo "FAIL: the stopped agent left its generation record behind" >&2
  fail=1
fi
started=$(date +%s)
got=$(stop_agent 1 600 | tr '\n' ' ' | sed 's/ $//')
if [ "$got" = "QUIT TERM exit 1" ] && [ $(($(date +%s) - started)) -lt 10 ]; then
  echo "ok: a job still running after the drain time is aborted with SIGTERM; no process of the agent is left"
else
  echo "FAIL: a job longer than the drain time: got '$got', want 'QUIT TERM exit 1' within 10 s" >&2
  cat "$work/logs/gitlab-runner.log" >&2
  fail=1
fi
exit "$fail"
