#!/usr/bin/env bash
# Makes this Linux machine a test bed for the Tart simulator: OpenSSH server (guests are real
# sshd processes), sudo, the guest accounts, and no host sshd on port 22. Idempotent; needs
# root; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
  echo "The test bed needs root: guests are sshd processes in their own namespaces. Run as root (e.g. sudo $0)." >&2
  exit 1
fi
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v sudo >/dev/null || missing+=(sudo)
command -v unshare >/dev/null || missing+=(util-linux)
command -v pkill >/dev/null || missing+=(procps)
# macOS guests log in with zsh, as on a Mac.
[ -x /bin/zsh ] || missing+=(zsh)
# Wall-clock jumps in tests (the driver must not trust the wall clock).
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || missing+=(libfaketime)
# The simulator's Local Network privacy fault is an iptables rule.
command -v iptables >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Guests bind 127.0.0.N:22; a host sshd on the wildcard address would take that port.
service ssh stop >/dev/null 2>&1 || true
mkdir -p /run/sshd
./setup-guest-users.sh
