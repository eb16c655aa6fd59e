#!/usr/bin/env bash
# Creates the guest accounts the Tart simulator's images log in with. Idempotent; needs root.
set -euo pipefail
mkdir -p /Users
add_user() {
  local user=$1 password=$2
  if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --home-dir "/Users/$user" --shell /bin/bash "$user"
  fi
  echo "$user:$password" | chpasswd
  echo "$user ALL=(ALL) NOPASSWD: ALL" > "/etc/sudoers.d/tart-sim-$user"
  chmod 0440 "/etc/sudoers.d/tart-sim-$user"
}
add_user admin admin
add_user builder 'b-uild3r!pw'
