#!/usr/bin/env bash
# The host directories the nix-darwin module creates at activation (darwin-modules/render.nix
# `activationScript`), run as root with a stand-in `sudo` that runs the command as the user,
# as on a Mac. The user is `nobody`; its home is under a root-owned directory standing in for
# /Users, where the user cannot create anything:
# - a missing home directory is created by `createhomedir -cu nobody`, as nix-darwin creates
#   homes (a stand-in that lays out a home, its Library included, as macOS's does);
# - without createhomedir (or when it leaves no home), a missing home directory is created,
#   the user's, mode 0700, and the state and log directories below it then are too;
# - an existing home directory is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "host-dirs.sh: run as root (activation does; the stand-in sudo drops to nobody)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
mkdir -p "$work/bin" "$work/Users"
cat >"$work/bin/sudo" <<'SH'
#!/usr/bin/env bash
# sudo --user=U -- command...
user=${1#--user=}
shift 2
exec runuser -u "$user" -- "$@"
SH
chmod +x "$work/bin/sudo"
# createhomedir -cu nobody: logs its call, and lays out the home as macOS's would.
mkdir -p "$work/macos"
cat >"$work/macos/createhomedir" <<SH
#!/usr/bin/env bash
echo "createhomedir \$*" >>"$work/calls"
[ "\$*" = "-cu nobody" ] || exit 2
install -d -m 0750 -o nobody -g nogroup "$work/Users/nobody" "$work/Users/nobody/Library"
SH
chmod +x "$work/macos/createhomedir"

home=$work/Users/nobody
# Only the module's block of host directories (the rest touches the host's Softnet copy).
snippet=$(nix-instantiate --eval --strict --json -E "
  (import ./darwin-modules/render.nix).activationScript {
    user = \"nobody\"; home = \"$home\"; stateDir = \"$home/.gitlab-runner\";
    logDir = \"$home/Library/Logs/gitlab-runner-tart\"; runners = { }; softnetSource = null; }" \
  2>/dev/null | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin))' \
  | awk '/^# gitlab-runner-tart: host directories/ { on = 1 } on { print } on && $0 == ")" { exit }')

fail=0
expect() {
  if [ "$2" = "$3" ]; then
    echo "ok: $1"
  else
    echo "FAIL: $1: got '$2', want '$3'" >&2
    cat "$work/out" >&2
    fail=1
  fi
}
# Prints owner, group and mode of each path given.
owners() { for p in "$@"; do stat -c '%U:%G:%a' "$p" 2>/dev/null || echo missing; done | tr '\n' ' '; }

status=0
PATH="$work/bin:$PATH" bash -euo pipefail -c "$snippet" >"$work/out" 2>&1 || status=$?
expect "a missing home directory is created for the user; the directories below it follow" \
  "$status $(owners "$home" "$home/.gitlab-runner" "$home/Library/Logs/gitlab-runner-tart")" \
  "0 nobody:nogroup:700 nobody:nogroup:700 nobody:nogroup:755 "

rm -rf "$home"
status=0
PATH="$work/macos:$work/bin:$PATH" bash -euo pipefail -c "$snippet" >"$work/out" 2>&1 || status=$?
expect "with createhomedir, a missing home directory is created by it, as nix-darwin does" \
  "$status $(cat "$work/calls") $(owners "$home" "$home/Library" "$home/.gitlab-runner")" \
  "0 createhomedir -cu nobody nobody:nogroup:750 nobody:nogroup:750 nobody:nogroup:700 "

chmod 0751 "$home"
rm -rf "$home/.gitlab-runner"
status=0
PATH="$work/bin:$PATH" bash -euo pipefail -c "$snippet" >"$work/out" 2>&1 || status=$?
expect "an existing home directory is left as it is" "$status $(owners "$home")" \
  "0 nobody:nogroup:751 "
exit "$fail"
