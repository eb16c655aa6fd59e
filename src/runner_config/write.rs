//! Writing config.toml safely: atomically (a temporary file in the same directory, fsync,
//! rename, fsync of the directory) with mode 0600, leaving nothing behind on error.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// Writes `data` to `path` atomically with mode 0600: a temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory. On error nothing is left
/// behind and an existing `path` is untouched.
pub(super) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let file_name = path.file_name().ok_or_else(|| {
        anyhow::anyhow!(
            "output {} is not a file path; pass --output <dir>/config.toml",
            path.display()
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let cant = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write {}: {what}: {e}; make sure {} exists and is writable by this user",
            path.display(),
            dir.display()
        )
    };

    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| cant("creating a temporary file", e))?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| cant("setting mode 0600", e))?;
        file.write_all(data).map_err(|e| cant("writing", e))?;
        file.sync_all().map_err(|e| cant("syncing", e))?;
        fs::rename(&tmp, path).map_err(|e| cant("renaming the temporary file", e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
