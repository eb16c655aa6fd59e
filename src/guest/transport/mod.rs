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
pub mod stage;

use std::fs::File;
use std::time::Duration;

use anyhow::Result;

use crate::host::tart::Tart;
use crate::host::vm::{Connection, VmState};
use crate::model::TransportKind;

pub use stage::{RemoteExit, Stage};

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
