#!/usr/bin/env bash
# Driver overhead benchmark: our driver vs the original Python driver 0.3.12 vs plain OpenSSH,
# on the Tart simulator. One command, as root, on Debian/Ubuntu:
#
#     ./bench/run.sh                # prints the table, writes bench/RESULTS.md
#     ./bench/run.sh --runs 10      # any bench.py option (./bench/run.sh --help)
#
# It installs what is missing (openssh, sudo, python3-venv, GNU time), creates the
# simulator's guest users, builds our driver and the simulator in release mode, installs
# gitlab-runner-tart-driver==0.3.12 from PyPI into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/tartdrv-bench, and runs bench/bench.py.
# The original driver's prepare creates /opt/temp, /opt/builds and /opt/cache on this host
# (the simulated guests share its file system); they are left in place.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: needs root (the Tart simulator runs guests in namespaces)" >&2
    exit 1
fi

need=()
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v sudo >/dev/null || need+=(sudo)
[ -x /usr/bin/time ] || need+=(time)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v python3 >/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bench/run.sh: needs Python 3.11 or newer" >&2
    exit 1
}
# The simulator refuses to start guests while the host's sshd listens on 0.0.0.0:22.
if ss -ltn 2>/dev/null | awk '{print $4}' | grep -qE '^(0\.0\.0\.0|\*|\[::\]):22$'; then
    echo "bench/run.sh: an sshd listens on all addresses, port 22; the simulator needs 127.0.0.N:22 free (stop it first)" >&2
    exit 1
fi
tests/bed/setup-guest-users.sh

echo "bench: building (release)" >&2
cargo build --release --quiet -p gitlab-runner-tart-driver -p tart-sim
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

cache=${XDG_CACHE_HOME:-$HOME/.cache}/tartdrv-bench
venv=$cache/venv-0.3.12
if ! "$venv/bin/gitlab-runner-tart-driver" --help >/dev/null 2>&1; then
    echo "bench: installing gitlab-runner-tart-driver==0.3.12 into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check gitlab-runner-tart-driver==0.3.12
fi

exec python3 "$repo/bench/bench.py" \
    --driver "$target_dir/release/gitlab-runner-tart-driver" \
    --tart-sim "$target_dir/release/tart" \
    --venv "$venv" \
    --output "$repo/bench/RESULTS.md" \
    "$@"
