//! Free space, for the directory and Tart home checks.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(super) const GB: f64 = 1e9;

/// Bytes free for this user on the file system holding `path` (or its nearest existing
/// ancestor).
pub(super) fn free_bytes(path: &Path) -> Option<(u64, PathBuf)> {
    let existing = path.ancestors().find(|p| p.exists())?.to_path_buf();
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64 * st.f_frsize as u64, existing))
}

pub(super) fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB)
}
