//! `tart exec` transport: commands go through Tart's guest agent over the VM's control
//! socket. No IP, no SSH, no macOS Local Network permission. The agent runs programs
//! directly, so the stage wrapper is handed to `sh -c`, inside a shell that reports the
//! script's status (see `exec_status`): `tart exec`'s own exit code cannot tell a script's
//! `exit 1` from a broken connection to the agent.

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::AsyncWriteExt;

use super::exec_status::{StatusFilter, StatusRecord};
use super::lifeline::{self, Lifeline};
use super::relay::{Cancel, Output};
use super::stage::{cancel_command, pid_file_for_stage, stage_wrapper, RemoteExit, Stage};
use crate::host::tart::Tart;
use crate::host::vm::VmName;

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

    pub async fn run_stage(
        &self,
        stage: &Stage<'_>,
        stdin: File,
        cancel: &mut Cancel,
    ) -> Result<RemoteExit> {
        let pid_file = pid_file_for_stage();
        let record = StatusRecord::new();
        let (output, out_write, err_write) = Output::pipes()?;
        let mut command = self.tart.command_through(&lifeline::wrapper());
        command
            .args(["exec", "-i", self.vm.as_str()])
            .args(record.wrap(&stage_wrapper(stage, &pid_file)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write))
            // Out of the runner's process group: a cancel's SIGTERM is ours to handle, by
            // killing the script in the guest; `tart exec` itself must not die of it first.
            // Out of reach of the runner's SIGKILL too, so it dies with us by the lifeline.
            .process_group(0);
        let _lifeline = Lifeline::hand_over(&mut command)?;
        let mut child = command.spawn()?;
        // `command` holds the pipes' write ends: the relay ends only once they are closed.
        drop(command);
        // Stderr passes through the status record's filter on its way to the job log.
        let mut relay = output.relay_filtered(record.filter())?;
        let filter = tokio::select! {
            filter = &mut relay => filter?,
            _ = cancel.recv() => return Ok(self.stop_remote(&pid_file, &mut child).await),
        };
        tokio::select! {
            status = child.wait() => self.classify(status?.code().unwrap_or(255), &filter).await,
            _ = cancel.recv() => Ok(self.stop_remote(&pid_file, &mut child).await),
        }
    }

    /// Ends a cancelled stage's script in the guest: SIGTERM, then SIGKILL and `tart exec`
    /// itself if it has not ended within 1.5 s. Bounded throughout.
    async fn stop_remote(&self, pid_file: &str, child: &mut tokio::process::Child) -> RemoteExit {
        eprintln!("Stage cancelled: stopping the script in the VM...");
        self.quick(&cancel_command(pid_file, "TERM")).await;
        if tokio::time::timeout(Duration::from_millis(1500), child.wait())
            .await
            .is_err()
        {
            self.quick(&cancel_command(pid_file, "KILL")).await;
            // `tart exec` and its lifeline's watcher share the wrapper's process group.
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                // SAFETY: kill(2) of the process group our child leads.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
        }
        RemoteExit::Code(143)
    }

    pub async fn run_captured(
        &self,
        command: &str,
        input: &[u8],
        limit: Duration,
    ) -> Result<(RemoteExit, String)> {
        let record = StatusRecord::new();
        let mut child = self
            .tart
            .command()
            .args(["exec", "-i", self.vm.as_str()])
            .args(record.wrap(command))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take();
        // The input (a setup script, a 70 MB gitlab-runner) goes in while the output comes
        // out, both under the limit: a guest that stops reading must not hang prepare.
        let feed = async {
            if let Some(stdin) = stdin.as_mut() {
                stdin.write_all(input).await?;
                stdin.shutdown().await?;
            }
            drop(stdin);
            Ok::<(), std::io::Error>(())
        };
        let work = async {
            let (fed, out) = tokio::join!(feed, child.wait_with_output());
            let out = out?;
            // A command that exits without reading all of its input is not a failure to feed.
            if let Err(e) = fed {
                if out.status.success() {
                    return Err(e);
                }
            }
            Ok::<_, std::io::Error>(out)
        };
        let out = tokio::time::timeout(limit, work).await.map_err(|_| {
            anyhow!(
                "command in the VM did not finish within {}s",
                limit.as_secs()
            )
        })??;
        let mut filter = record.filter();
        let mut stderr = filter.feed(&out.stderr);
        stderr.extend(filter.finish());
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&stderr));
        let exit = self
            .classify(out.status.code().unwrap_or(255), &filter)
            .await?;
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
    /// The script's status when its record came through and `tart exec` exited with it;
    /// otherwise Tart failed: the VM is gone, or the way to it broke while it still runs.
    async fn classify(&self, code: i32, filter: &StatusFilter) -> Result<RemoteExit> {
        if filter.status() == Some(code) {
            return Ok(RemoteExit::Code(code));
        }
        let running = match self.tart.list().await {
            Ok(list) => list
                .iter()
                .any(|e| e.name == self.vm.as_str() && e.is_running()),
            Err(_) => false,
        };
        if running {
            Ok(RemoteExit::Broken(format!(
                "`tart exec` failed (exit status {code}) before the script's status came back: {}",
                filter.last_line()
            )))
        } else {
            Ok(RemoteExit::Lost(format!(
                "VM {} is no longer running",
                self.vm
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest command that never reads its input (a hung agent, a stopped guest) must not
    /// hold prepare: the 8 MB stays unwritten, and the limit still ends the wait.
    #[test]
    fn input_a_guest_does_not_read_is_bounded_by_the_limit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tart = dir.path().join("tart");
        std::fs::write(&tart, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&tart, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = ExecTransport::new(
            Tart::new(tart.to_str().unwrap()),
            VmName::for_job("test", 1),
        );
        let started = std::time::Instant::now();
        let result = crate::rt::runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                exec.run_captured(
                    "cat > /dev/null",
                    &vec![0u8; 8 << 20],
                    Duration::from_secs(1),
                ),
            )
            .await
        });
        let outcome = result.expect("the limit did not bound the input");
        assert!(
            outcome.is_err(),
            "a command that never read its input succeeded"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
