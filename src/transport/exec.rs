//! `tart exec` transport: commands go through Tart's guest agent over the VM's control
//! socket. No IP, no SSH, no macOS Local Network permission. The agent runs programs
//! directly, so the stage wrapper is handed to `sh -c`.

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::AsyncWriteExt;

use super::{cancel_command, cancelled, pid_file_for_stage, stage_wrapper, RemoteExit, Stage};
use crate::tart::Tart;
use crate::vm::VmName;

pub struct ExecTransport {
    tart: Tart,
    vm: VmName,
}

impl ExecTransport {
    pub fn new(tart: Tart, vm: VmName) -> ExecTransport {
        ExecTransport { tart, vm }
    }

    /// Whether the guest agent answers, within `limit`.
    pub async fn agent_answers(&self, limit: Duration) -> bool {
        let done = self
            .tart
            .capture(&["exec", self.vm.as_str(), "true"], limit)
            .await;
        matches!(done, Ok(done) if done.ok())
    }

    pub async fn run_stage(&self, stage: &Stage<'_>, stdin: File) -> Result<RemoteExit> {
        let pid_file = pid_file_for_stage();
        let mut child = self
            .tart
            .command()
            .args([
                "exec",
                "-i",
                self.vm.as_str(),
                "sh",
                "-c",
                &stage_wrapper(stage, &pid_file),
            ])
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            // Out of the runner's process group: a cancel's SIGTERM is ours to handle, by
            // killing the script in the guest; `tart exec` itself must not die of it first.
            .process_group(0)
            .spawn()?;
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = cancelled() => {
                eprintln!("Stage cancelled: stopping the script in the VM...");
                self.quick(&cancel_command(&pid_file, "TERM")).await;
                match tokio::time::timeout(Duration::from_millis(1500), child.wait()).await {
                    Ok(s) => s?,
                    Err(_) => {
                        self.quick(&cancel_command(&pid_file, "KILL")).await;
                        let _ = child.kill().await;
                        return Ok(RemoteExit::Code(143));
                    }
                }
            }
        };
        self.classify(status.code().unwrap_or(255)).await
    }

    pub async fn run_captured(
        &self,
        command: &str,
        input: &[u8],
        limit: Duration,
    ) -> Result<(RemoteExit, String)> {
        let mut child = self
            .tart
            .command()
            .args(["exec", "-i", self.vm.as_str(), "sh", "-c", command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input).await?;
            stdin.shutdown().await?;
        }
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "command in the VM did not finish within {}s",
                    limit.as_secs()
                )
            })??;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let exit = self.classify(out.status.code().unwrap_or(255)).await?;
        Ok((exit, text))
    }

    async fn quick(&self, command: &str) {
        let _ = self
            .tart
            .capture(
                &["exec", self.vm.as_str(), "sh", "-c", command],
                Duration::from_secs(5),
            )
            .await;
    }

    /// `tart exec` passes the guest's exit code through, but uses 1 and 2 for its own
    /// errors too; a VM that is no longer running settles which it was.
    async fn classify(&self, code: i32) -> Result<RemoteExit> {
        if code == 0 {
            return Ok(RemoteExit::Code(0));
        }
        let running = match self.tart.list().await {
            Ok(list) => list
                .iter()
                .any(|e| e.name == self.vm.as_str() && e.is_running()),
            Err(_) => false,
        };
        if running {
            Ok(RemoteExit::Code(code))
        } else {
            Ok(RemoteExit::Lost(format!(
                "VM {} is no longer running",
                self.vm
            )))
        }
    }
}
