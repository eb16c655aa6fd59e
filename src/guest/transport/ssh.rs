//! SSH transport: prepare opens one OpenSSH ControlMaster per job, and every later stage
//! attaches to it through the openssh crate's native mux. No stage after prepare performs
//! an SSH handshake.

use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use openssh::{Error as SshError, Session};
use tokio::io::AsyncWriteExt;

use super::askpass::{self, PasswordPipe};
use super::relay::{Cancel, Output};
use super::stage::{cancel_command, pid_file_for_stage, stage_wrapper, RemoteExit, Stage};
use crate::host::state_dir::CONTROL_SOCKET;
use crate::host::vm::VmState;

/// How to log in to the guest.
pub enum Auth {
    Password(String),
    Key(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password(_) => f.write_str("Password(***)"),
            Auth::Key(p) => write!(f, "Key({})", p.display()),
        }
    }
}

/// Where the job's ControlMaster connects: the guest's address, or a command whose stdin
/// and stdout are a byte stream to the guest's sshd (ssh's `ProxyCommand`), for backends
/// whose VMs this host cannot route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip {
        host: String,
        port: u16,
    },
    Proxy {
        /// The VM's name, for ssh's messages and `%h`.
        name: String,
        /// The command line ssh runs (through the user's shell) to reach the guest. It must
        /// hold no secret: ssh's argv is visible to every user of the host.
        command: String,
    },
}

impl Target {
    /// The arguments that point `ssh` at the guest, as `user`.
    fn ssh_args(&self, user: &str) -> Vec<String> {
        let mut args = Vec::new();
        let host = match self {
            Target::Ip { host, port } => {
                args.extend(["-p".to_string(), port.to_string()]);
                host
            }
            Target::Proxy { name, command } => {
                args.extend(["-o".to_string(), format!("ProxyCommand={command}")]);
                name
            }
        };
        args.extend(["-l".to_string(), user.to_string(), host.clone()]);
        args
    }
}

/// Why a master could not be started.
pub enum MasterError {
    /// The guest refused the credentials: retrying cannot help.
    Refused(String),
    /// Not reachable yet (booting, sshd not up): worth another try.
    NotYet(String),
    /// Something on this host is wrong (no `ssh`, no askpass file): say so, do not retry.
    Broken(String),
}

/// Starts the job's ControlMaster: `ssh -M -f -N` forks into the background once logged in.
pub async fn start_master(
    state: &VmState,
    target: &Target,
    user: &str,
    auth: &Auth,
) -> Result<(), MasterError> {
    let socket = state.control_socket();
    let log = state.ssh_log();
    let record = state
        .create()
        .map_err(|e| MasterError::Broken(format!("{e:#}")))?;
    for name in [CONTROL_SOCKET, "ssh.log"] {
        record
            .remove(name)
            .map_err(|e| MasterError::Broken(format!("{e:#}")))?;
    }
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-F")
        .arg("none")
        .args(["-M", "-f", "-N"])
        .arg("-S")
        .arg(&socket)
        .arg("-E")
        .arg(&log);
    for opt in [
        "ControlPersist=30m",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "ConnectTimeout=10",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
        "NumberOfPasswordPrompts=1",
        "IdentityAgent=none",
        "LogLevel=ERROR",
    ] {
        cmd.arg("-o").arg(opt);
    }
    // Keep the master's hands off our stdio: gitlab-runner reads the stage's output until
    // every holder has closed it, and the master outlives this process.
    // A login that outlives our patience must not stay behind holding the ControlPath.
    cmd.kill_on_drop(true);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("SSH_AUTH_SOCK");
    // The master lives as long as the job: none of the job's secrets in its environment.
    for name in crate::model::job_env_names() {
        cmd.env_remove(name);
    }
    // Held until ssh has logged in; dropping it deletes the file.
    let _password_file = match auth {
        Auth::Password(password) => {
            let file = PasswordPipe::serve(&record, password)
                .map_err(|e| MasterError::Broken(e.to_string()))?;
            let exe = std::env::current_exe().map_err(|e| MasterError::Broken(e.to_string()))?;
            cmd.arg("-o")
                .arg("PubkeyAuthentication=no")
                .arg("-o")
                .arg("PreferredAuthentications=password");
            cmd.env("SSH_ASKPASS", exe)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env(askpass::ENV, file.path());
            cmd.env_remove("DISPLAY");
            Some(file)
        }
        Auth::Key(key) => {
            cmd.arg("-o").arg("IdentitiesOnly=yes").arg("-i").arg(key);
            cmd.arg("-o").arg("PreferredAuthentications=publickey");
            None
        }
    };
    cmd.args(target.ssh_args(user));
    let status = match tokio::time::timeout(Duration::from_secs(30), cmd.status()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(MasterError::Broken(format!(
                "cannot run `ssh` ({e}): install OpenSSH's client on this host"
            )))
        }
        Err(_) => return Err(MasterError::NotYet("ssh did not log in within 30s".into())),
    };
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let reason = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string();
    if text.contains("Permission denied") || text.contains("Too many authentication failures") {
        Err(MasterError::Refused(reason))
    } else {
        Err(MasterError::NotYet(reason))
    }
}

pub struct SshTransport {
    session: Session,
    socket: PathBuf,
}

impl SshTransport {
    pub fn attach(state: &VmState) -> Result<SshTransport> {
        let socket = state.control_socket();
        if !state.owns_control_socket() {
            bail!(
                "the job's SSH connection is gone ({} is missing or not this user's socket): the VM or its connection was lost",
                socket.display()
            );
        }
        let session = Session::resume_mux(
            socket.clone().into_boxed_path(),
            Some(state.ssh_log().into_boxed_path()),
        );
        Ok(SshTransport { session, socket })
    }

    pub async fn run_stage(
        &self,
        stage: &Stage<'_>,
        stdin: File,
        cancel: &mut Cancel,
    ) -> Result<RemoteExit> {
        let pid_file = pid_file_for_stage();
        // The master writes the script's output into pipes we read to the end: the exit
        // status can arrive before the master has written everything, and a mux client that
        // leaves at the exit status makes the master drop what it has not yet written.
        let (output, out_write, err_write) = Output::pipes()?;
        let mut command = self.session.raw_command(stage_wrapper(stage, &pid_file));
        let spawn = command
            .stdin(openssh::Stdio::from(stdin))
            .stdout(openssh::Stdio::from(out_write))
            .stderr(openssh::Stdio::from(err_write))
            .spawn();
        let child = tokio::select! {
            child = spawn => child.map_err(|e| self.describe(e))?,
            _ = cancel.recv() => return Ok(self.stop_remote(&pid_file, std::future::pending::<()>()).await),
        };
        // `command` holds the pipes' write ends: the relay ends only once they are closed.
        drop(command);
        let mut relay = output.relay()?;
        tokio::select! {
            _ = &mut relay => {}
            _ = cancel.recv() => return Ok(self.stop_remote(&pid_file, relay).await),
        }
        // The script closed its output (`exec >log 2>&1`, or it is done): its exit status is
        // still to come, and a cancel must still reach it.
        let wait = child.wait();
        tokio::pin!(wait);
        tokio::select! {
            status = &mut wait => self.exit(status).await,
            _ = cancel.recv() => Ok(self.stop_remote(&pid_file, wait).await),
        }
    }

    /// Ends a cancelled stage's remote process group: SIGTERM, then SIGKILL if `ended` (the
    /// output closing, or the exit status) does not come within 1.5 s. Bounded throughout.
    async fn stop_remote(&self, pid_file: &str, ended: impl std::future::Future) -> RemoteExit {
        eprintln!("Stage cancelled: stopping the script in the VM...");
        self.quick(&cancel_command(pid_file, "TERM")).await;
        if tokio::time::timeout(Duration::from_millis(1500), ended)
            .await
            .is_err()
        {
            self.quick(&cancel_command(pid_file, "KILL")).await;
        }
        RemoteExit::Code(143)
    }

    pub async fn run_captured(
        &self,
        command: &str,
        input: &[u8],
        limit: Duration,
    ) -> Result<(RemoteExit, String)> {
        let work = async {
            let mut child = self
                .session
                .raw_command(command)
                .stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await
                .map_err(|e| self.describe(e))?;
            if let Some(mut stdin) = child.stdin().take() {
                stdin.write_all(input).await?;
                stdin.shutdown().await?;
            }
            let out = child.wait_with_output().await;
            match out {
                Ok(o) => {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    Ok((RemoteExit::Code(o.status.code().unwrap_or(255)), text))
                }
                Err(e) => Ok((self.exit(Err(e)).await?, String::new())),
            }
        };
        tokio::time::timeout(limit, work).await.map_err(|_| {
            anyhow!(
                "command in the VM did not finish within {}s",
                limit.as_secs()
            )
        })?
    }

    async fn quick(&self, command: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.session.raw_command(command).status(),
        )
        .await;
    }

    async fn exit(&self, result: Result<std::process::ExitStatus, SshError>) -> Result<RemoteExit> {
        match result {
            Ok(status) => Ok(RemoteExit::Code(status.code().unwrap_or(255))),
            Err(SshError::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(RemoteExit::Code(127))
            }
            Err(SshError::RemoteProcessTerminated) => {
                // Killed by a signal, or the connection died: only the master can tell, and
                // a master that does not answer (stopped, or its host asleep) counts as lost.
                let check = tokio::time::timeout(Duration::from_secs(5), self.session.check());
                if matches!(check.await, Ok(Ok(()))) {
                    Ok(RemoteExit::Code(255))
                } else {
                    Ok(RemoteExit::Lost(
                        "the SSH connection to the VM was lost".into(),
                    ))
                }
            }
            Err(e) => Ok(RemoteExit::Lost(format!("{}", self.describe(e)))),
        }
    }

    fn describe(&self, e: SshError) -> anyhow::Error {
        match e {
            SshError::Disconnected => anyhow!("the SSH connection to the VM was lost"),
            SshError::SshMux(inner) => anyhow!(
                "cannot use the job's SSH connection {}: {inner}",
                self.socket.display()
            ),
            other => anyhow!("SSH: {other}"),
        }
    }
}

/// Whether the job's master still answers on its control socket (it is gone when its
/// connection died: a VM that stopped, a proxy whose WebSocket was cut).
pub async fn master_answers(state: &VmState) -> bool {
    if !state.owns_control_socket() {
        return false;
    }
    let session = Session::resume_mux(state.control_socket().into_boxed_path(), None);
    // A resumed session leaves the master alone when dropped.
    matches!(
        tokio::time::timeout(Duration::from_secs(5), session.check()).await,
        Ok(Ok(()))
    )
}

/// Ends the job's master connection (idempotent) and removes its socket. A socket that is
/// not this user's is never talked to.
pub async fn close_master(state: &VmState) -> Result<()> {
    let Some(record) = state.record()? else {
        return Ok(());
    };
    if state.owns_control_socket() {
        let socket = state.control_socket();
        let session = Session::resume_mux(socket.into_boxed_path(), None);
        let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
    }
    record.remove(CONTROL_SOCKET)
}

pub fn describe_refusal(user: &str, ip: &str, reason: &str) -> String {
    format!(
        "the VM refused SSH login as `{user}` at {ip} ({reason}): check the image's credentials (TART_SSH_USERNAME / TART_SSH_PASSWORD job variables, or --ssh-username / --ssh-password-file / --ssh-key-file)"
    )
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn a_guest_with_an_address_is_reached_on_its_port() {
        let target = Target::Ip {
            host: "192.168.64.5".into(),
            port: 22,
        };
        assert_eq!(
            target.ssh_args("admin"),
            ["-p", "22", "-l", "admin", "192.168.64.5"]
        );
    }

    #[test]
    fn a_guest_behind_a_proxy_command_is_reached_through_it_by_name() {
        let target = Target::Proxy {
            name: "tartdrv-abc-1".into(),
            command: "/usr/bin/driver orchard-proxy tartdrv-abc-1 22".into(),
        };
        let args = target.ssh_args("admin");
        assert_eq!(
            args,
            [
                "-o",
                "ProxyCommand=/usr/bin/driver orchard-proxy tartdrv-abc-1 22",
                "-l",
                "admin",
                "tartdrv-abc-1"
            ]
        );
        assert!(
            !args.contains(&"-p".to_string()),
            "no port of our own: {args:?}"
        );
    }

    /// A master that accepts the mux connection and never answers (stopped, its host
    /// asleep): a stage that must ask it whether the connection lives gets "lost" within
    /// the check's 5 s, not a wait without end.
    #[test]
    fn a_master_that_never_answers_counts_as_lost_within_seconds() {
        use super::{RemoteExit, SshError, SshTransport};
        // Short: a socket path must fit 104 bytes, and build directories can be long.
        let dir = tempfile::Builder::new()
            .prefix("tartdrv-mux")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("m");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mute = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let transport = SshTransport {
            session: openssh::Session::resume_mux(socket.clone().into_boxed_path(), None),
            socket,
        };
        let started = std::time::Instant::now();
        let exit = crate::rt::runtime().block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                transport.exit(Err(SshError::RemoteProcessTerminated)),
            )
            .await
        });
        let exit = exit.expect("the check of a mute master was not bounded");
        assert!(matches!(exit, Ok(RemoteExit::Lost(_))), "{exit:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        drop(mute);
    }
}
