//! The driver is its own `SSH_ASKPASS` program, so a password never appears in any argv and
//! never in the environment of the long-lived ssh master: ssh gets only the path of a 0600
//! file, which prepare deletes as soon as the master has logged in.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::state_dir::Dir;

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
    pub fn write(dir: &Dir, password: &str) -> Result<PasswordFile> {
        let path = dir.path().join("askpass");
        dir.remove("askpass")?;
        let mut f = dir
            .open("askpass", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .context("cannot write the askpass file")?;
        f.write_all(password.as_bytes())?;
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
