#!/usr/bin/env bash
# Warm pool benchmark: a queue of jobs at concurrency 1, cold vs --warm-pool 1, on the Tart
# simulator with a 10 s boot. As root (the simulator runs guests in namespaces):
#
#     ./bench/warm.sh                 # 3 turns of each column; prints the table, writes bench/WARM-RESULTS.md
#     ./bench/warm.sh --pairs 5       # any bench/warm.py option
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench/warm.sh: needs root (the Tart simulator runs guests in namespaces)" >&2
    exit 1
fi
tests/bed/setup-guest-users.sh
echo "bench: building (release)" >&2
cargo build --release --quiet -p gitlab-runner-tart-driver -p tart-sim
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/warm.py \
    --driver "$target_dir/release/gitlab-runner-tart-driver" \
    --tart-sim "$target_dir/release/tart" \
    --output bench/WARM-RESULTS.md \
    "$@"
