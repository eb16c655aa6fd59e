//! Where the state directory is by default, and the names and lengths of what the driver
//! makes in it (control socket paths must fit in `sun_path`).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where per-VM records live: `<state dir>/vms/<VM name>/`.
pub const VMS: &str = "vms";
/// Where slot locks live: `<state dir>/slots/`.
pub const SLOTS: &str = "slots";
/// A VM's SSH control socket: `<state dir>/vms/<VM name>/ssh`.
pub const CONTROL_SOCKET: &str = "ssh";
/// The longest VM name the driver makes (`tartdrv-` + 12-character runner token + `-` + the
/// 20 digits of the largest job id).
pub const MAX_VM_NAME_LEN: usize = 41;
/// While it binds a control socket, ssh appends a dot and 16 random characters.
const SSH_TEMP_SUFFIX: usize = 17;
/// `sun_path` less its terminating NUL: 104 bytes on macOS, 108 on Linux.
pub const SOCKET_PATH_MAX: usize = if cfg!(target_os = "macos") { 103 } else { 107 };

/// The longest socket path (as ssh binds it) the driver makes under `root`, in bytes.
pub fn longest_socket_path(root: &Path) -> usize {
    root.as_os_str().len()
        + format!("/{VMS}//{CONTROL_SOCKET}").len()
        + MAX_VM_NAME_LEN
        + SSH_TEMP_SUFFIX
}

/// The default state directory: private to the runner's user and short enough for every
/// socket path the driver makes. macOS: `~/Library/Caches/tartdrv`; elsewhere
/// `$XDG_STATE_HOME/tartdrv` (`~/.local/state/tartdrv`). When the home directory is too long
/// for those, `~/.tartdrv`.
pub fn default_path() -> PathBuf {
    let Some(home) = home_dir() else {
        // A relative path, which `open` refuses with a message naming --state-dir.
        return PathBuf::from("$HOME/.tartdrv");
    };
    let preferred = if cfg!(target_os = "macos") {
        home.join("Library/Caches/tartdrv")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".local/state"))
            .join("tartdrv")
    };
    if longest_socket_path(&preferred) <= SOCKET_PATH_MAX {
        preferred
    } else {
        home.join(".tartdrv")
    }
}

fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into the buffers we own and sets `found` to `pwd` or NULL.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated.
    let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}
