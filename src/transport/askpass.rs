//! The driver is its own `SSH_ASKPASS` program, so a password never appears in any argv and
//! never in the environment of the long-lived ssh master: ssh gets only the path of a 0600
//! file, which prepare deletes as soon as the master has logged in.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Set in ssh's environment; its presence puts the driver binary in askpass mode.
pub const ENV: &str = "TARTDRV_ASKPASS_FILE";

/// If this process was started by ssh as its askpass helper, prints the password and
/// returns the exit code. Checked before any argument parsing.
pub fn answer_if_asked() -> Option<i32> {
    let file = std::env::var_os(ENV)?;
    // ssh passes the prompt as the only argument; anything else is a normal invocation.
    if std::env::args_os().len() != 2 {
        return None;
    }
    Some(match std::fs::read(&file) {
        Ok(password) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&password);
            let _ = out.write_all(b"\n");
            0
        }
        Err(_) => 1,
    })
}

/// A password file that removes itself when dropped.
pub struct PasswordFile {
    path: PathBuf,
}

impl PasswordFile {
    /// Writes the password to a temporary name and renames it into place: the file ssh
    /// reads is complete or absent, and a failed write (a full disk) leaves no fragment
    /// of a password behind.
    pub fn write(dir: &Path, password: &str) -> Result<PasswordFile> {
        let path = dir.join("askpass");
        let partial = dir.join("askpass.partial");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&partial);
        let written = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut f| f.write_all(password.as_bytes()))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e).context("cannot write the askpass file");
        }
        Ok(PasswordFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
