//! SSH transport: prepare opens one OpenSSH ControlMaster per job, and every later stage
//! attaches to it through the openssh crate's native mux. No stage after prepare performs
//! an SSH handshake.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use openssh::{Error as SshError, Session};
use tokio::io::AsyncWriteExt;

use super::askpass::{self, PasswordFile};
use super::{cancel_command, cancelled, pid_file_for_stage, stage_wrapper, RemoteExit, Stage};
use crate::vm::VmState;

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
    ip: &str,
    user: &str,
    auth: &Auth,
) -> Result<(), MasterError> {
    let socket = state.control_socket();
    let log = state.ssh_log();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&log);
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
    for name in crate::job::job_env_names() {
        cmd.env_remove(name);
    }
    // Held until ssh has logged in; dropping it deletes the file.
    let _password_file = match auth {
        Auth::Password(password) => {
            let file = PasswordFile::write(&state.dir, password)
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
    cmd.args(["-p", "22", "-l", user, ip]);
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

/// Waits until something accepts TCP connections on `ip:22`, polling every 100 ms.
pub async fn wait_for_port(ip: &str, deadline: Instant) -> bool {
    let addr = format!("{ip}:22");
    while Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub struct SshTransport {
    session: Session,
    socket: PathBuf,
}

impl SshTransport {
    pub fn attach(state: &VmState) -> Result<SshTransport> {
        let socket = state.control_socket();
        if !socket.exists() {
            bail!(
                "the job's SSH connection is gone ({} missing): the VM or its connection was lost",
                socket.display()
            );
        }
        let session = Session::resume_mux(
            socket.clone().into_boxed_path(),
            Some(state.ssh_log().into_boxed_path()),
        );
        Ok(SshTransport { session, socket })
    }

    pub async fn run_stage(&self, stage: &Stage<'_>, stdin: File) -> Result<RemoteExit> {
        let pid_file = pid_file_for_stage();
        // The master writes the script's output into pipes we read to the end: the exit
        // status can arrive before the master has written everything, and a mux client that
        // leaves at the exit status makes the master drop what it has not yet written.
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let child = self
            .session
            .raw_command(stage_wrapper(stage, &pid_file))
            .stdin(openssh::Stdio::from(stdin))
            .stdout(openssh::Stdio::from(out_write))
            .stderr(openssh::Stdio::from(err_write))
            .spawn()
            .await
            .map_err(|e| self.describe(e))?;
        // Copies go straight to descriptors 1 and 2 (splice, no buffering), not through
        // std's locked stdout/stderr, which our own messages still need meanwhile.
        let (our_out, our_err) = (dup_stdio(1)?, dup_stdio(2)?);
        // Plain threads, not the runtime's blocking pool: after a cancel the process must be
        // free to exit even if a guest process still holds the output open.
        let (done_tx, relay) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let out = std::thread::spawn(move || {
                std::io::copy(&mut File::from(out_read), &mut File::from(our_out))
            });
            let _ = std::io::copy(&mut File::from(err_read), &mut File::from(our_err));
            let _ = out.join();
            let _ = done_tx.send(());
        });
        tokio::pin!(relay);
        tokio::select! {
            _ = &mut relay => return self.exit(child.wait().await).await,
            _ = cancelled() => {}
        }
        eprintln!("Stage cancelled: stopping the script in the VM...");
        let _ = self.quick(&cancel_command(&pid_file, "TERM")).await;
        match tokio::time::timeout(Duration::from_millis(1500), &mut relay).await {
            Ok(_) => self.exit(child.wait().await).await,
            Err(_) => {
                let _ = self.quick(&cancel_command(&pid_file, "KILL")).await;
                Ok(RemoteExit::Code(143))
            }
        }
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

    async fn quick(&self, command: &str) -> Result<()> {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.session.raw_command(command).status(),
        )
        .await;
        Ok(())
    }

    async fn exit(&self, result: Result<std::process::ExitStatus, SshError>) -> Result<RemoteExit> {
        match result {
            Ok(status) => Ok(RemoteExit::Code(status.code().unwrap_or(255))),
            Err(SshError::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(RemoteExit::Code(127))
            }
            Err(SshError::RemoteProcessTerminated) => {
                // Killed by a signal, or the connection died: only the master can tell.
                if self.session.check().await.is_ok() {
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

/// Ends the job's master connection (idempotent) and removes its socket.
pub async fn close_master(socket: &Path) -> Result<()> {
    if socket.exists() {
        let session = Session::resume_mux(socket.to_path_buf().into_boxed_path(), None);
        let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// A second descriptor for our stdout or stderr.
fn dup_stdio(fd: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `new` is fresh and owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// A pipe whose ends close on exec.
fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors that we then own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    for fd in fds {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

pub fn describe_refusal(user: &str, ip: &str, reason: &str) -> String {
    format!(
        "the VM refused SSH login as `{user}` at {ip} ({reason}): check the image's credentials (TART_SSH_USERNAME / TART_SSH_PASSWORD job variables, or --ssh-username / --ssh-password-file / --ssh-key-file)"
    )
}
