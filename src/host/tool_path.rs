//! Finding Tart and Softnet when gitlab-runner's PATH lacks them.
//!
//! A runner installed with `gitlab-runner install` runs under launchd, whose PATH is
//! `/usr/bin:/bin:/usr/sbin:/sbin`: Homebrew's `tart` and `softnet` are not on it, nor is a
//! Nix profile. Before anything else runs, the driver appends the usual install directory
//! of each tool it cannot find to its own PATH, so that it finds `tart`, and `tart run`
//! (which looks `softnet` up on PATH itself) finds `softnet`. Appended, never prepended:
//! whatever the admin put on PATH still wins. `doctor` reports what was added.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The tools the driver or Tart look up on PATH.
const TOOLS: [&str; 2] = ["tart", "softnet"];

/// A tool found outside PATH, and the directory appended to PATH for it.
#[derive(Debug, Clone)]
pub struct Added {
    pub tool: &'static str,
    pub dir: PathBuf,
}

static ADDED: OnceLock<Vec<Added>> = OnceLock::new();

/// Where Homebrew (Apple Silicon, then Intel) and Nix (nix-darwin's system and per-user
/// profiles, a single-user profile, the default profile) put executables.
pub fn install_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/opt/homebrew/bin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    dirs.push(PathBuf::from("/run/current-system/sw/bin"));
    if let Ok(user) = std::env::var("USER") {
        dirs.push(Path::new("/etc/profiles/per-user").join(user).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(Path::new(&home).join(".nix-profile/bin"));
    }
    dirs.push(PathBuf::from("/nix/var/nix/profiles/default/bin"));
    dirs
}

/// Appends to this process's PATH the install directory of each tool not on PATH. Called
/// once, first thing in `main`, while the process has a single thread.
pub fn complete_path() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let mut added = Vec::new();
    for tool in TOOLS {
        if dirs.iter().any(|d| is_executable(&d.join(tool))) {
            continue;
        }
        if let Some(dir) = install_dirs()
            .into_iter()
            .find(|d| is_executable(&d.join(tool)))
        {
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
            added.push(Added { tool, dir });
        }
    }
    if !added.is_empty() {
        if let Ok(joined) = std::env::join_paths(&dirs) {
            std::env::set_var("PATH", joined);
        }
    }
    let _ = ADDED.set(added);
}

/// The tools [`complete_path`] found outside the PATH the driver was started with.
pub fn added() -> &'static [Added] {
    ADDED.get().map(Vec::as_slice).unwrap_or(&[])
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
