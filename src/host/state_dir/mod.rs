//! The driver's state directory: per-VM records, SSH control sockets, askpass files and slot
//! locks. Whoever can write into it can take over a job (plant a connection record or a
//! control socket and receive the job's script with its secrets), so this module owns every
//! check on it, and the rest of the driver reaches it only through the handles made here.
//!
//! The rules, the same for `prepare`, every other stage and `doctor`:
//! - the default lives in the runner user's home, never in a shared directory such as /tmp;
//! - every directory above the state directory belongs to root or to this user, and no one
//!   else may rename its entries (not writable by group or others, unless sticky);
//! - the state directory and every level below it are real directories (not symbolic
//!   links) owned by this user and not writable by group or others;
//! - files are opened relative to a held directory handle with `O_NOFOLLOW`, and must belong
//!   to this user.
//!
//! Anything else is refused as a system failure that names the path and the fix.
//!
//! May use: nothing of the crate; only the standard library, `libc` and `anyhow`.

mod dir;
mod paths;
mod refusal;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use dir::Dir;
#[cfg(test)]
pub use paths::MAX_VM_NAME_LEN;
pub use paths::{default_path, longest_socket_path, CONTROL_SOCKET, SLOTS, SOCKET_PATH_MAX, VMS};
pub use refusal::Refusal;
use refusal::{check_level, choose_another, uid};

/// What `doctor` learns about a state directory without creating anything.
pub enum Inspection {
    /// It exists and passes every check.
    Fine { mode: u32 },
    /// It does not exist; the stages will create it (mode 0700) under a trusted parent.
    WillBeCreated,
}

/// Every directory above the state directory must belong to root or to this user, and be
/// writable by no one else (a sticky directory such as /tmp is fine: others cannot rename
/// what is ours). Checked along the path as given and along its resolved form.
fn check_ancestors(root: &Path) -> Result<(), Refusal> {
    let me = uid();
    let check = |p: &Path| -> Result<(), Refusal> {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return Ok(()); // created below by this user, or refused when opening
        };
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let writable_by_others =
            !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if owner_ok && !writable_by_others {
            return Ok(());
        }
        Err(Refusal {
            problem: format!(
                "{} (above the state directory {}) {}: its owner or group could replace the state directory",
                p.display(),
                root.display(),
                if owner_ok {
                    format!("is writable by group or others (mode {:o})", meta.mode() & 0o7777)
                } else {
                    format!("belongs to uid {}", meta.uid())
                }
            ),
            fix: format!(
                "set --state-dir to a directory whose parents only root and the runner's user can write (the default is {})",
                default_path().display()
            ),
        })
    };
    for p in root.ancestors().skip(1) {
        check(p)?;
    }
    if let Some(parent) = root.parent().and_then(|p| std::fs::canonicalize(p).ok()) {
        for p in parent.ancestors() {
            check(p)?;
        }
    }
    Ok(())
}

fn require_absolute(path: &Path) -> Result<(), Refusal> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(Refusal {
        problem: format!(
            "the state directory `{}` is not an absolute path",
            path.display()
        ),
        fix: "set --state-dir to an absolute path (is HOME set for gitlab-runner?)".into(),
    })
}

fn require_short(path: &Path) -> Result<(), Refusal> {
    let longest = longest_socket_path(path);
    if longest <= SOCKET_PATH_MAX {
        return Ok(());
    }
    Err(Refusal {
        problem: format!(
            "state directory {} is too long: SSH control sockets under it take up to {longest} bytes, over the {SOCKET_PATH_MAX} this OS allows",
            path.display()
        ),
        fix: format!(
            "set --state-dir to a path at least {} bytes shorter",
            longest - SOCKET_PATH_MAX
        ),
    })
}

/// Checks a state directory as the stages would, creating nothing (for `doctor`).
/// The socket-path limit is `doctor`'s separate check.
pub fn inspect(path: &Path) -> Result<Inspection, Refusal> {
    require_absolute(path)?;
    check_ancestors(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            check_level(path, &meta)?;
            let root = StateDir::open_existing(path).map_err(|e| Refusal {
                problem: format!("{e:#}"),
                fix: choose_another(path),
            })?;
            for sub in [VMS, SLOTS] {
                if let Err(e) = root.dir.existing_subdir(sub) {
                    return Err(e.downcast::<Refusal>().unwrap_or_else(|e| Refusal {
                        problem: format!("{e:#}"),
                        fix: choose_another(path),
                    }));
                }
            }
            Ok(Inspection::Fine {
                mode: meta.mode() & 0o7777,
            })
        }
        Err(_) => Ok(Inspection::WillBeCreated),
    }
}

/// A verified, open state directory. Cheap to clone (the handle is shared).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: Arc<Dir>,
}

impl StateDir {
    /// Opens the state directory, creating it (mode 0700) if missing, after every check.
    pub fn open(path: &Path) -> Result<StateDir> {
        require_short(path)?;
        Self::open_ignoring_socket_limit(path)
    }

    /// [`StateDir::open`] without the socket-path limit: for `doctor`, which reports that
    /// limit as a check of its own, and for unit tests, which run in build directories
    /// longer than any socket path.
    pub fn open_ignoring_socket_limit(path: &Path) -> Result<StateDir> {
        require_absolute(path)?;
        // Refuse before creating anything under someone else's directory.
        check_ancestors(path)?;
        if let Err(e) = std::fs::symlink_metadata(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| {
                    format!("cannot inspect the state directory {}", path.display())
                });
            }
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| {
                    format!(
                        "cannot create the state directory {}: set --state-dir to a directory the runner's user can create",
                        path.display()
                    )
                })?;
            check_ancestors(path)?;
        }
        let root = Self::open_existing(path)?;
        // Every stage refuses a bad level below as soon as it opens the directory.
        for sub in [VMS, SLOTS] {
            root.existing_subdir(sub)?;
        }
        Ok(root)
    }

    fn open_existing(path: &Path) -> Result<StateDir> {
        Ok(StateDir {
            dir: Arc::new(Dir::open_verified(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A level below the root, created (mode 0700) if missing, after the same checks.
    pub fn subdir(&self, name: &str) -> Result<Dir> {
        self.dir.subdir(name)
    }

    /// A level below the root if it exists, checked.
    pub fn existing_subdir(&self, name: &str) -> Result<Option<Dir>> {
        self.dir.existing_subdir(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    #[test]
    fn the_default_fits_every_socket_path_the_driver_makes() {
        let path = default_path();
        assert!(path.is_absolute() || std::env::var_os("HOME").is_none());
        assert!(
            longest_socket_path(&path) <= SOCKET_PATH_MAX,
            "{}",
            path.display()
        );
        assert!(!path.starts_with("/tmp"), "{}", path.display());
    }

    #[test]
    fn a_state_dir_writable_by_others_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open_ignoring_socket_limit(&dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mode 777") && err.contains("chmod go-w"),
            "{err}"
        );
    }

    #[test]
    fn a_symlinked_state_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("state")).unwrap();
        let err = StateDir::open_ignoring_socket_limit(&tmp.path().join("state"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_symlinked_level_below_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), state.path().join(VMS)).unwrap();
        let err = state.subdir(VMS).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn files_are_not_opened_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        let vms = state.subdir(VMS).unwrap();
        std::fs::write(tmp.path().join("target"), "planted").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("target"), vms.path().join("lock")).unwrap();
        assert!(vms.open("lock", libc::O_RDWR | libc::O_CREAT).is_err());
        assert!(vms.read("lock").is_err());
    }

    #[test]
    fn a_relative_or_too_long_state_dir_is_refused() {
        assert!(StateDir::open(Path::new("state")).is_err());
        let long = PathBuf::from("/").join("s".repeat(80));
        let err = StateDir::open(&long).unwrap_err().to_string();
        assert!(
            err.contains("too long") && err.contains("bytes shorter"),
            "{err}"
        );
    }

    #[test]
    fn a_parent_writable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("shared");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open_ignoring_socket_limit(&parent.join("state"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert!(!parent.join("state").exists());
    }
}
