#!/usr/bin/env bash
# Runs every test: unit tests, the simulator's and the harness's own tests, and the
# end-to-end jobs through the harness and the Tart simulator. Needs root (guests are real
# sshd processes in their own namespaces); prepares the machine first if needed.
set -euo pipefail
cd "$(dirname "$0")"
tests/bed/prepare-host.sh
cargo build --workspace --all-targets --features e2e
cargo test --workspace --features e2e "$@"
