//! The supervisor: a small detached process that owns `tart run` for one VM.
//!
//! `tart run` blocks for the VM's whole life, so prepare cannot wait for it. The supervisor
//! starts it in a session of its own (out of reach of the runner's signals to the stage's
//! process group), keeps Tart's output in the VM's log, and records how it ended, so that
//! prepare fails at once with Tart's own message and later stages can say why a VM is gone.
//! It inherits the VM's lock and slot descriptors and passes them to `tart run`.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::host::state_dir::Dir;
use crate::host::vm::{VmState, RUN_EXIT, RUN_LOG, SUPERVISOR_PID, TART_RUN_PID};

/// Entry point of the hidden `supervise` subcommand.
pub fn supervise(args: &SuperviseArgs) -> Result<()> {
    let state = Dir::open_verified(&args.state)?;
    state.write_atomic(SUPERVISOR_PID, std::process::id().to_string().as_bytes())?;
    let log = state.append(RUN_LOG)?;
    let spawned = Command::new(&args.tart)
        .arg("run")
        .arg(&args.vm)
        .args(&args.run_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn();
    let record = match spawned {
        Err(e) => format!("tart run could not start: {e}"),
        Ok(mut child) => {
            state.write_atomic(TART_RUN_PID, child.id().to_string().as_bytes())?;
            match child.wait() {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => format!("tart run exited with status {code}"),
                    (None, Some(sig)) => format!("tart run was killed by signal {sig}"),
                    _ => "tart run ended".to_string(),
                },
                Err(e) => format!("lost track of tart run: {e}"),
            }
        }
    };
    state.write_atomic(RUN_EXIT, record.as_bytes())
}

/// Starts the supervisor for `state`'s VM, detached, handing it `inherit_fds` (the VM lock
/// and slot locks) and nothing else of ours: in particular not our stdout and stderr, which
/// gitlab-runner reads until every holder has closed them.
pub fn start(
    state: &VmState,
    tart: &str,
    run_args: &[String],
    inherit_fds: Vec<i32>,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the driver's own executable")?;
    let log = state.run_log()?;
    state.forget_run_exit()?;
    let mut cmd = Command::new(exe);
    cmd.arg("supervise")
        .arg("--vm")
        .arg(state.name.as_str())
        .arg("--state")
        .arg(&state.dir)
        .arg("--tart")
        .arg(tart)
        .arg("--")
        .args(run_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(Path::new("/"));
    // The supervisor and `tart run` live as long as the VM: none of the job's secrets.
    for name in crate::model::job_env_names() {
        cmd.env_remove(name);
    }
    // SAFETY: only async-signal-safe calls (setsid, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for &fd in &inherit_fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the VM supervisor")?;
    Ok(())
}

/// Kills the supervisor and `tart run` of a VM, which share the process group the supervisor
/// created with `setsid`. Callers only do this while the VM's lock is held, i.e. while some
/// process of that group is alive, so the recorded id cannot have been reused.
pub fn kill(state: &VmState) {
    if let Some(pid) = state.supervisor_pid().filter(|&pid| pid > 1) {
        // SAFETY: plain kill(2) of a process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// `supervise` (hidden): what prepare starts it with.
#[derive(clap::Args, Debug, Clone)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub vm: String,
    #[arg(long)]
    pub state: std::path::PathBuf,
    #[arg(long)]
    pub tart: String,
    /// The arguments of `tart run`.
    #[arg(last = true)]
    pub run_args: Vec<String>,
}
