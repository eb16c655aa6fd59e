//! Copies a remote command's output to our stdout and stderr through pipes we own, and
//! listens for the runner's cancel for as long as a stage runs.
//!
//! Neither the ssh mux nor `tart exec` ever gets our own stdout or stderr: gitlab-runner
//! reads them until every holder has closed them, so a child that outlived us (a SIGKILL
//! gives us no chance to clean up) would keep the job's log open.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Result;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The runner's cancel (SIGTERM, or SIGINT from a terminal). Created once when a stage
/// starts and listened to in every state until it ends: once installed, the handlers
/// replace the default action, so a state that stopped listening could not be cancelled
/// until gitlab-runner's SIGKILL.
pub struct Cancel {
    term: Signal,
    int: Signal,
}

impl Cancel {
    pub fn listen() -> Result<Cancel> {
        Ok(Cancel {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when the stage is cancelled.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// Output pipes for one remote command: give the write ends to the command, then
/// [`Output::relay`] the read ends.
pub struct Output {
    out_read: OwnedFd,
    err_read: OwnedFd,
}

impl Output {
    pub fn pipes() -> Result<(Output, OwnedFd, OwnedFd)> {
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        Ok((Output { out_read, err_read }, out_write, err_write))
    }

    /// Copies both pipes to our stdout and stderr until every writer has closed them; the
    /// receiver resolves then. The copies go straight to descriptors 1 and 2 (no buffering),
    /// not through std's locked handles, which our own messages still need meanwhile.
    /// Plain threads, not the runtime's blocking pool: after a cancel the process must be
    /// free to exit even if a guest process still holds the output open.
    pub fn relay(self) -> Result<tokio::sync::oneshot::Receiver<()>> {
        let (our_out, our_err) = (dup_stdio(1)?, dup_stdio(2)?);
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let Output { out_read, err_read } = self;
        std::thread::spawn(move || {
            let out = std::thread::spawn(move || {
                std::io::copy(&mut File::from(out_read), &mut File::from(our_out))
            });
            let _ = std::io::copy(&mut File::from(err_read), &mut File::from(our_err));
            let _ = out.join();
            let _ = done_tx.send(());
        });
        Ok(done)
    }

    /// [`Output::relay`], with stderr passed through `filter` on its way; the receiver gets
    /// the filter back once both pipes are closed.
    pub fn relay_filtered<F: ErrFilter + Send + 'static>(
        self,
        mut filter: F,
    ) -> Result<tokio::sync::oneshot::Receiver<F>> {
        let (our_out, our_err) = (dup_stdio(1)?, dup_stdio(2)?);
        let (done_tx, done) = tokio::sync::oneshot::channel::<F>();
        let Output { out_read, err_read } = self;
        std::thread::spawn(move || {
            let out = std::thread::spawn(move || {
                std::io::copy(&mut File::from(out_read), &mut File::from(our_out))
            });
            let _ = filter.copy(File::from(err_read), File::from(our_err));
            let _ = out.join();
            let _ = done_tx.send(filter);
        });
        Ok(done)
    }
}

/// Something that edits a stream on its way through: chunks in, what to pass on out.
pub trait ErrFilter {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// The end of the stream: whatever was held back.
    fn finish(&mut self) -> Vec<u8>;

    /// Copies `from` to `to` through the filter until EOF.
    fn copy(&mut self, mut from: impl Read, mut to: impl Write) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            to.write_all(&self.feed(&buf[..n]))?;
        }
        to.write_all(&self.finish())
    }
}

/// A second descriptor for our stdout or stderr, closed on exec.
fn dup_stdio(fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `new` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A pipe whose ends close on exec, atomically where the platform can: another thread's
/// spawn between `pipe` and `fcntl` would otherwise inherit them and hold the output open.
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        // SAFETY: pipe2(2) fills two descriptors that we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    // macOS has no pipe2. The stages run one runtime thread and spawn children only from
    // it, so nothing can fork between the two calls.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        // SAFETY: pipe(2) fills two descriptors that we then own.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        for fd in fds {
            // SAFETY: fcntl on descriptors we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_ends_close_on_exec() {
        use std::os::fd::AsRawFd;
        let (r, w) = pipe().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            // SAFETY: F_GETFD on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }
}
