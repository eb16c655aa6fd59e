#!/usr/bin/env bash
# Runs one complete GitLab job through the driver, the way gitlab-runner would, on the Tart
# simulator: config, prepare (clone, boot, SSH), every run stage, cleanup. Prints the job log.
# Needs root; prepares the machine first if needed.
set -euo pipefail
cd "$(dirname "$0")"
tests/bed/prepare-host.sh
cargo build --workspace --quiet
exec target/debug/try-job "$@"
