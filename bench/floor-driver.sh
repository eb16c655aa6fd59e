#!/usr/bin/env bash
# The "floor" of the benchmark: the least a Tart driver has to do, written with plain tools.
# config echoes the JSON; prepare clones, starts the VM, waits for its IP and opens one OpenSSH
# ControlMaster (password through SSH_ASKPASS); run is not here: the benchmark calls
# `ssh -S <socket> <host> bash -s < script` directly; cleanup closes the master, stops and
# deletes the VM. No error handling, no retries, no checks: a yardstick, not a driver.
#
# Environment: FLOOR_VM (VM name), FLOOR_IMAGE, FLOOR_DIR (socket and IP files), FLOOR_ASKPASS
# (prints the password), and `tart` on PATH.
set -eu
vm=$FLOOR_VM
sock=$FLOOR_DIR/$vm.sock
case $1 in
config)
    printf '{"builds_dir":"/tmp/builds","cache_dir":"/tmp/cache","builds_dir_is_shared":false}\n'
    ;;
prepare)
    tart clone "$FLOOR_IMAGE" "$vm"
    setsid tart run --no-graphics "$vm" </dev/null >/dev/null 2>&1 &
    ip=$(tart ip --wait 60 "$vm")
    # The lease may be a stale one of an earlier VM with the same MAC address (Tart keeps
    # leases after a VM is deleted), so retry the login until sshd answers.
    for _ in $(seq 600); do
        SSH_ASKPASS=$FLOOR_ASKPASS SSH_ASKPASS_REQUIRE=force \
            ssh -F none -M -f -N -S "$sock" -o ControlPersist=30m -o ConnectTimeout=10 \
            -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o PubkeyAuthentication=no -o PreferredAuthentications=password \
            -o LogLevel=QUIET "admin@$ip" </dev/null >/dev/null 2>&1 && break
        sleep 0.1
        ip=$(tart ip --wait 60 "$vm")
    done
    echo "$ip" >"$FLOOR_DIR/$vm.ip"
    ;;
cleanup)
    ssh -F none -S "$sock" -O exit floor 2>/dev/null || true
    tart stop "$vm" >/dev/null 2>&1 || true
    tart delete "$vm"
    rm -f "$FLOOR_DIR/$vm.ip"
    ;;
*)
    echo "usage: $0 config|prepare|cleanup" >&2
    exit 2
    ;;
esac
