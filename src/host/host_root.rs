//! Where this Mac's system files are: `/`, or, for the test bed's simulated Mac, the
//! directory named by `TART_DRIVER_HOST_ROOT`. The driver reads bootpd's leases file
//! and recognises Virtualization's VM processes under it.

use std::path::PathBuf;

/// The environment variable that moves the system root (the simulator sets it).
const VARIABLE: &str = "TART_DRIVER_HOST_ROOT";

/// The system root, resolved (a process's executable path is resolved too).
pub fn root() -> PathBuf {
    let root = std::env::var_os(VARIABLE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    root.canonicalize().unwrap_or(root)
}

/// A system file's path, e.g. `/var/db/dhcpd_leases`, under the system root.
pub fn path(system_path: &str) -> PathBuf {
    root().join(system_path.trim_start_matches('/'))
}
