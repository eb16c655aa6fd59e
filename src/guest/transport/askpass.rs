//! The driver is its own `SSH_ASKPASS` program, so a password is never in any argv, never
//! in the environment of the long-lived ssh master, and never at rest on disk: ssh gets the
//! path of a named pipe (FIFO) in the VM's private record, and prepare hands the password
//! through it to the askpass helper only while ssh logs in. A pipe keeps no data of its own,
//! so a prepare killed at any moment leaves at most an empty pipe node, removed with the
//! record: nothing complete, nothing partial.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::host::state_dir::Dir;

/// Set in ssh's environment; its presence puts the driver binary in askpass mode.
pub const ENV: &str = "TARTDRV_ASKPASS_FILE";

/// The pipe's name in the VM's record.
const NAME: &str = "askpass";

/// How long the helper waits for prepare to hand over the password: a prepare that died
/// must not leave ssh waiting for ever.
const HELPER_WAIT_SECS: u32 = 30;

/// If this process was started by ssh as its askpass helper, prints the password and
/// returns the exit code. Checked before any argument parsing.
pub fn answer_if_asked() -> Option<i32> {
    let pipe = std::env::var_os(ENV)?;
    // ssh passes the prompt as the only argument; anything else is a normal invocation.
    if std::env::args_os().len() != 2 {
        return None;
    }
    // SAFETY: alarm(2) only schedules SIGALRM, whose default action ends this process.
    unsafe { libc::alarm(HELPER_WAIT_SECS) };
    // Opening blocks until prepare opens the other end; reading ends when it closes it.
    Some(match std::fs::read(&pipe) {
        Ok(password) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&password);
            let _ = out.write_all(b"\n");
            0
        }
        Err(_) => 1,
    })
}

/// A password served through a pipe in `dir` for as long as this value lives; dropping it
/// stops serving and removes the pipe.
pub struct PasswordPipe {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl PasswordPipe {
    pub fn serve(dir: &Dir, password: &str) -> Result<PasswordPipe> {
        dir.remove(NAME)?;
        dir.make_fifo(NAME)?;
        let path = dir.path().join(NAME);
        let stop = Arc::new(AtomicBool::new(false));
        let (pipe, password, stopped) = (path.clone(), password.to_string(), stop.clone());
        // A plain thread: the reader (ssh's askpass helper) comes when ssh has reached
        // password authentication. The password is served once, as ssh asks once
        // (NumberOfPasswordPrompts=1): a second writer could reach the same reader.
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match open_writer(&pipe) {
                    Ok(Some(mut writer)) => {
                        let _ = writer.write_all(password.as_bytes());
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => return,
                }
            }
        });
        Ok(PasswordPipe { path, stop })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pipe opened for writing once a reader has it open; None while no one reads.
fn open_writer(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // SAFETY: getuid never fails.
    if !meta.file_type().is_fifo() || meta.uid() != unsafe { libc::getuid() } {
        return Err(std::io::Error::other("the askpass pipe was replaced"));
    }
    // Back to blocking writes: the password is small, but the reader decides the pace.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(Some(file))
}

impl Drop for PasswordPipe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}
