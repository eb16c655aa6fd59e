#!/usr/bin/env bash
# Runs every test: unit tests, the simulator's and harness's own tests, and the
# end-to-end jobs through the harness and the Tart simulator. Needs root (guests are
# real sshd processes in their own namespaces); see README "Running the tests".
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --all-targets
cargo test --workspace "$@"
