//! A lifeline for `tart exec`: it runs outside the runner's process group (so that a
//! cancel's SIGTERM is ours to handle), which also puts it out of reach of the runner's
//! SIGKILL. It must still die with the driver, on every platform: Linux's parent-death
//! signal does not exist on macOS. So `tart exec` starts under a small `sh` that holds the
//! read end of a pipe whose only write end the driver keeps; when the driver dies, however
//! it dies, the kernel closes that end, the `sh` reads end-of-file and kills `tart exec`.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Result;

use super::relay::pipe;

/// The lifeline's descriptor in the wrapper.
const FD: i32 = 3;

/// Runs `"$@"` with the wrapper's stdin, and SIGKILLs it when descriptor 3 reaches
/// end-of-file. An asynchronous command would get /dev/null as stdin, hence descriptor 4.
/// The wrapper, the command and the watcher share one process group (`sh -c` has no job
/// control): a caller that must end the command at once kills that group.
const WRAPPER: &str = r#"exec 4<&0
"$@" <&4 4<&- 3<&- &
child=$!
exec 4<&-
{ read -r _ <&3; kill -KILL "$child" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

/// The driver's end: as long as this lives, so may the command.
pub struct Lifeline {
    _keep: OwnedFd,
}

/// The program and leading arguments that start a command under a lifeline: the
/// command's own program and arguments follow them, and [`Lifeline::hand_over`] is called
/// on the command before it is spawned.
pub fn wrapper() -> [&'static str; 4] {
    ["/bin/sh", "-c", WRAPPER, "sh"]
}

impl Lifeline {
    /// Creates the pipe and arranges for `command`'s child to get its read end as
    /// descriptor 3 (and nothing else of it).
    pub fn hand_over(command: &mut tokio::process::Command) -> Result<Lifeline> {
        let (read, write) = pipe()?;
        // SAFETY: dup2 and fcntl are async-signal-safe; `read` stays open until spawn
        // returns, as the closure owns it.
        unsafe {
            command.pre_exec(move || {
                let read = read.as_raw_fd();
                if read == FD {
                    // Already there, but close-on-exec: keep it across exec.
                    if libc::fcntl(FD, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(read, FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Lifeline { _keep: write })
    }
}
