//! Why a state directory, or one level of it, is refused, with the fix to name.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::paths::default_path;

/// Why a state directory is refused, and what the admin should do.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.problem, self.fix)
    }
}

impl std::error::Error for Refusal {}

pub(super) fn uid() -> u32 {
    // SAFETY: getuid never fails.
    unsafe { libc::getuid() }
}

pub(super) fn choose_another(path: &Path) -> String {
    format!(
        "remove {} when no job runs (it may need root), or set --state-dir to a directory only the runner's user can write (the default is {})",
        path.display(),
        default_path().display()
    )
}

/// Checks one directory level from its (not followed) metadata.
pub(super) fn check_level(path: &Path, meta: &std::fs::Metadata) -> Result<(), Refusal> {
    let me = uid();
    let refuse = |problem: String, fix: String| Err(Refusal { problem, fix });
    if meta.file_type().is_symlink() {
        return refuse(
            format!("state directory {} is a symbolic link: whoever controls its target controls the driver's sockets", path.display()),
            choose_another(path),
        );
    }
    if !meta.is_dir() {
        return refuse(
            format!("state directory {} is not a directory", path.display()),
            choose_another(path),
        );
    }
    if meta.uid() != me {
        return refuse(
            format!(
                "state directory {} belongs to uid {}, not to the runner's user (uid {me}): its owner could plant a control socket and receive the job's scripts",
                path.display(),
                meta.uid()
            ),
            choose_another(path),
        );
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(
            format!(
                "state directory {} has mode {:o}: others could write sockets and passwords there",
                path.display(),
                meta.mode() & 0o7777
            ),
            format!(
                "`chmod go-w {}`, or remove it when no job runs",
                path.display()
            ),
        );
    }
    Ok(())
}
