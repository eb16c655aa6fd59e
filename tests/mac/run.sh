#!/usr/bin/env bash
# The real-Mac test kit: runs the end-to-end jobs of tests/real_mac.rs against the real
# `tart` on an Apple Silicon Mac, then the host checks of docs/first-mac.md that need a
# whole host (doctor, a third macOS VM not started by the driver, lease growth, launchd's
# PATH). CI has no Mac; run this on one, as the user gitlab-runner runs as.
#
#     tests/mac/run.sh --linux-image ghcr.io/cirruslabs/ubuntu:latest \
#                      --macos-image ghcr.io/cirruslabs/macos-sequoia-base:latest
#     tests/mac/run.sh --dry-run ...      # print what would run, run nothing
#
# Options: --bridged IFACE (also run the Linux job with bridged networking and the ARP
# resolver), --skip-foreign (no third-VM check), --dry-run. Exit status: 0 when every step
# passed; the summary at the end lists each step's result.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

linux_image=""
macos_image=""
bridged=""
dry_run=false
foreign=true
while [ $# -gt 0 ]; do
    case $1 in
    --linux-image) linux_image=${2:?--linux-image needs an OCI name}; shift 2 ;;
    --macos-image) macos_image=${2:?--macos-image needs an OCI name}; shift 2 ;;
    --bridged) bridged=${2:?--bridged needs an interface, e.g. en0}; shift 2 ;;
    --skip-foreign) foreign=false; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) usage 0 ;;
    *) echo "tests/mac/run.sh: unknown option $1" >&2; usage 64 ;;
    esac
done
if [ -z "$linux_image" ] || [ -z "$macos_image" ]; then
    echo "tests/mac/run.sh: --linux-image and --macos-image are required" >&2
    usage 64
fi

results=()
# Runs one step (a command line), or prints it with --dry-run; records pass/fail.
step() {
    local name=$1
    shift
    printf '\n=== %s\n+ %s\n' "$name" "$*"
    if $dry_run; then
        results+=("SKIP  $name (dry run)")
        return 0
    fi
    if "$@"; then
        results+=("PASS  $name")
    else
        results+=("FAIL  $name (exit $?)")
    fi
}

leases=/var/db/dhcpd_leases
count_leases() {
    if [ -r "$leases" ]; then grep -c 'ip_address=' "$leases" || true; else echo 0; fi
}

if ! $dry_run; then
    [ "$(uname -s)" = Darwin ] || { echo "tests/mac/run.sh: needs macOS (use --dry-run elsewhere)" >&2; exit 1; }
    [ "$(uname -m)" = arm64 ] || { echo "tests/mac/run.sh: needs Apple Silicon" >&2; exit 1; }
    command -v tart >/dev/null || { echo "tests/mac/run.sh: tart is not on PATH (brew install cirruslabs/cli/tart)" >&2; exit 1; }
    command -v cargo >/dev/null || { echo "tests/mac/run.sh: needs Rust (cargo)" >&2; exit 1; }
fi

export TARTDRV_MAC_LINUX_IMAGE=$linux_image
export TARTDRV_MAC_MACOS_IMAGE=$macos_image
driver=target/release/gitlab-runner-tart-driver
leases_before=$(count_leases)

step "build" cargo build --release -p gitlab-runner-tart-driver
step "tart version" tart --version
step "pull both images" sh -c "tart pull '$linux_image' && tart pull '$macos_image'"
step "doctor" "$driver" doctor
step "end-to-end jobs on real Tart" \
    cargo test --release -p gitlab-runner-tart-driver --test real_mac -- --ignored --test-threads 1
step "tart exec env on the macOS image (the agent's environment)" sh -c "
    tart clone '$macos_image' tdm-exec-env && (tart run --no-graphics tdm-exec-env >/dev/null 2>&1 &) &&
    sleep 60 && tart exec tdm-exec-env env; s=\$?; tart stop tdm-exec-env; tart delete tdm-exec-env; exit \$s"
# launchd gives `gitlab-runner install` this PATH; the driver must find tart by itself.
step "a job under launchd's PATH" env -i HOME="$HOME" USER="${USER:-$(id -un)}" PATH=/usr/bin:/bin:/usr/sbin:/sbin \
    TARTDRV_MAC_LINUX_IMAGE="$linux_image" TARTDRV_MAC_MACOS_IMAGE="$macos_image" \
    "$(command -v cargo || echo cargo)" test --release -p gitlab-runner-tart-driver --test real_mac -- --ignored a_linux_job_runs_end_to_end
step "doctor under launchd's PATH" env -i HOME="$HOME" USER="${USER:-$(id -un)}" PATH=/usr/bin:/bin:/usr/sbin:/sbin "$driver" doctor
if [ -n "$bridged" ]; then
    step "Linux job, bridged on $bridged (ARP resolver)" env TARTDRV_MAC_OPTIONS="--bridged $bridged" \
        cargo test --release -p gitlab-runner-tart-driver --test real_mac -- --ignored a_linux_job_runs_end_to_end
fi
if $foreign; then
    # Two macOS VMs the driver did not start fill Apple's limit; a job must wait, not fail,
    # and doctor must show them. The job gets 3 minutes, then the VMs go.
    step "two foreign macOS VMs and a job" sh -c "
        for n in 1 2; do tart clone '$macos_image' tdm-foreign-\$n && (tart run --no-graphics tdm-foreign-\$n >/dev/null 2>&1 &); done
        sleep 30; '$driver' doctor
        (sleep 180; tart stop tdm-foreign-1; tart stop tdm-foreign-2) &
        cargo test --release -p gitlab-runner-tart-driver --test real_mac -- --ignored a_macos_job_sees_the_login_path_of_the_guest_user; s=\$?
        tart stop tdm-foreign-1 2>/dev/null; tart stop tdm-foreign-2 2>/dev/null
        tart delete tdm-foreign-1 tdm-foreign-2; exit \$s"
fi
leases_after=$(count_leases)

printf '\n=== Summary\n'
printf '%s\n' "${results[@]}"
printf 'DHCP leases in %s: %s before, %s after (each new MAC adds one for the lease time)\n' \
    "$leases" "$leases_before" "$leases_after"
for r in "${results[@]}"; do
    case $r in FAIL*) exit 1 ;; esac
done
