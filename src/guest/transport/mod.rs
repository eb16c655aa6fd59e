//! How commands reach the guest: SSH through one ControlMaster per job, or `tart exec`
//! through Tart's guest agent. Both run the same remote wrapper, stream output the same
//! way and cancel the same way, so stages do not care which one they use.
//!
//! May use: the rest of the guest side (login, setup paths), the host side's VM records,
//! state directory and Tart client, and `model`.

pub mod askpass;
pub mod exec;
pub mod exec_status;
pub mod lifeline;
pub mod reach;
pub mod relay;
pub mod ssh;

use std::fs::File;
use std::time::Duration;

use anyhow::Result;

use crate::host::tart::Tart;
use crate::host::vm::{Connection, VmState};
use crate::model::TransportKind;

/// How a remote command ended.
#[derive(Debug)]
pub enum RemoteExit {
    /// The command exited with this code.
    Code(i32),
    /// The VM or the connection to it went away: not the script's fault.
    Lost(String),
    /// The VM runs, but the way to it failed mid-command; the script's outcome is unknown.
    Broken(String),
}

pub enum Transport {
    Ssh(ssh::SshTransport),
    Exec(exec::ExecTransport),
}

impl Transport {
    pub fn from_connection(conn: &Connection, state: &VmState, tart: &Tart) -> Result<Transport> {
        Ok(match conn.transport {
            TransportKind::Exec => {
                Transport::Exec(exec::ExecTransport::new(tart.clone(), state.name.clone()))
            }
            _ => Transport::Ssh(ssh::SshTransport::attach(state)?),
        })
    }

    /// Runs a stage: `shell` as a login shell in the guest reading the script from `stdin`,
    /// its output on our stdout/stderr; on SIGTERM or SIGINT kills it in the guest and
    /// returns promptly.
    pub async fn run_stage(&self, stage: &Stage<'_>, stdin: File) -> Result<RemoteExit> {
        let mut cancel = relay::Cancel::listen()?;
        match self {
            Transport::Ssh(t) => t.run_stage(stage, stdin, &mut cancel).await,
            Transport::Exec(t) => t.run_stage(stage, stdin, &mut cancel).await,
        }
    }

    /// Runs a short command with `input` on stdin, capturing its output.
    pub async fn run_captured(
        &self,
        command: &str,
        input: &[u8],
        limit: Duration,
    ) -> Result<(RemoteExit, String)> {
        match self {
            Transport::Ssh(t) => t.run_captured(command, input, limit).await,
            Transport::Exec(t) => t.run_captured(command, input, limit).await,
        }
    }
}

/// The remote side of a stage: records the shell's PID (the leader of its process group
/// under sshd) so that a cancel can kill the whole group, loads the guest user's login
/// environment through their own login shell (see `crate::guest::login`), then becomes the shell
/// that reads the script on stdin. Every step `exec`s, so the recorded PID stays the
/// script shell's.
pub fn stage_wrapper(stage: &Stage<'_>, pid_file: &str) -> String {
    let shell = stage.shell;
    let mut setup = String::new();
    for (key, value) in stage.env {
        // Values are validated where they are parsed (plain characters only).
        setup.push_str(&format!("export {key}={value}; "));
    }
    let then = format!(
        "{setup}PATH=\"$HOME/{}:$PATH\"; export PATH; exec {shell}",
        crate::guest::GUEST_TOOLS_DIR
    );
    format!(
        "echo $$ > {pid_file}; {}",
        crate::guest::login::in_login_env(&then)
    )
}

/// How a stage's script is run in the guest: which shell, with which extra environment.
pub struct Stage<'a> {
    pub shell: &'a str,
    pub env: &'a [(String, String)],
}

/// The command that stops a stage's remote processes: the group first, then the children of
/// the shell in case it was not a group leader (tart exec).
pub fn cancel_command(pid_file: &str, signal: &str) -> String {
    format!(
        "p=$(cat {pid_file} 2>/dev/null) || exit 0; kill -{signal} -- -$p 2>/dev/null; pkill -{signal} -P $p 2>/dev/null; kill -{signal} $p 2>/dev/null; exit 0"
    )
}

/// A guest path for this stage's PID file, unique per stage process.
pub fn pid_file_for_stage() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("/tmp/.tartdrv-{}-{nanos}.pid", std::process::id())
}
