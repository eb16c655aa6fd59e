//! The Tart client: every `tart` invocation the driver makes, with a bound on its time and
//! Tart's own error message carried into ours.
//!
//! Tart prints results and progress on stdout and errors on stderr (bare, or prefixed
//! with `Error: `). Progress is relayed to the job log (our stderr); our stdout stays clean.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Credentials for one registry host, given to Tart through its environment for one
/// command: never in argv, never in the keychain.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegistryCredentials {{ host: {}, username: {}, password: *** }}",
            self.host, self.username
        )
    }
}

/// How to download images: credentials and the admin's pull options, for `pull` and `clone`.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    pub creds: Option<RegistryCredentials>,
    /// Instead of the runner user's home, unless the admin lets jobs use its logins.
    pub home: Option<crate::host::registry_policy::CredentialFreeHome>,
    pub insecure: bool,
    pub concurrency: Option<u32>,
    pub auto_prune: bool,
}

impl Fetch {
    /// For a clone of an image already on this host: Tart needs no registry, so it gets no
    /// credentials (nor do the copies it starts).
    pub fn without_credentials(&self) -> Fetch {
        Fetch {
            creds: None,
            ..self.clone()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.insecure {
            args.push("--insecure".to_string());
        }
        if let Some(n) = self.concurrency {
            args.extend(["--concurrency".to_string(), n.to_string()]);
        }
        args
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListEntry {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Source")]
    pub source: String,
    #[serde(rename = "State", default)]
    pub state: Option<String>,
    #[serde(rename = "Running", default)]
    pub running: Option<bool>,
}

impl ListEntry {
    pub fn is_running(&self) -> bool {
        self.state.as_deref() == Some("running") || self.running == Some(true)
    }
    pub fn is_local(&self) -> bool {
        self.source.eq_ignore_ascii_case("local")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct VmInfo {
    #[serde(rename = "OS")]
    pub os: String,
    #[serde(rename = "CPU")]
    pub cpu: u64,
    #[serde(rename = "Memory")]
    pub memory: u64,
}

#[derive(Debug, Clone)]
pub struct Tart {
    exe: String,
}

/// The result of one finished command.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Tart's message, without its `Error: ` prefix, wherever it is in stderr (after a
    /// housekeeping warning, before a usage block).
    pub fn message(&self) -> String {
        match crate::host::tart_message::error_line(&self.stderr) {
            line if line.is_empty() => crate::host::tart_message::error_line(&self.stdout),
            line => line,
        }
    }
}

impl Tart {
    pub fn new(exe: &str) -> Tart {
        Tart {
            exe: exe.to_string(),
        }
    }

    pub fn exe(&self) -> &str {
        &self.exe
    }

    pub fn command(&self) -> Command {
        self.command_through(&[])
    }

    /// `tart` started by `wrapper` (a program and its leading arguments, Tart's path and
    /// arguments after them), with the environment of [`Tart::command`].
    pub fn command_through(&self, wrapper: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.exe);
                cmd
            }
            None => Command::new(&self.exe),
        };
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        // Tart needs none of the job's variables; registry credentials are added back, for
        // the one host they belong to, by the commands that fetch images.
        for name in crate::model::job_env_names() {
            cmd.env_remove(name);
        }
        cmd
    }

    /// Runs `tart <args>` to completion within `limit`, capturing its output.
    pub async fn capture(&self, args: &[&str], limit: Duration) -> Result<Finished> {
        tracing::debug!(
            "running `{} {}`",
            self.exe,
            crate::logging::redact(&args.join(" "))
        );
        let mut cmd = self.command();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "`tart {}` did not finish within {}s",
                    args.first().unwrap_or(&""),
                    limit.as_secs()
                )
            })??;
        Ok(Finished {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "tart executable `{}` not found: install Tart or point --tart-executable at it",
                self.exe
            ),
            std::io::ErrorKind::PermissionDenied => anyhow!(
                "tart executable `{}` is not executable: check its permissions or --tart-executable",
                self.exe
            ),
            _ => anyhow!("cannot start `{}`: {e}", self.exe),
        }
    }

    /// Runs a command whose failure is an error, returning its stdout.
    async fn checked(&self, args: &[&str], limit: Duration) -> Result<String> {
        let done = self.capture(args, limit).await?;
        if !done.ok() {
            bail!("`tart {}` failed: {}", args.join(" "), done.message());
        }
        Ok(done.stdout)
    }

    pub async fn list(&self) -> Result<Vec<ListEntry>> {
        let out = self
            .checked(&["list", "--format", "json"], Duration::from_secs(30))
            .await?;
        serde_json::from_str(&out).context("cannot parse `tart list --format json`")
    }

    pub async fn get(&self, vm: &str) -> Result<VmInfo> {
        let out = self
            .checked(&["get", vm, "--format", "json"], Duration::from_secs(30))
            .await?;
        serde_json::from_str(&out).context("cannot parse `tart get --format json`")
    }

    pub async fn set(&self, vm: &str, flags: &[String]) -> Result<()> {
        let mut args = vec!["set", vm];
        args.extend(flags.iter().map(String::as_str));
        self.checked(&args, Duration::from_secs(60)).await.map(drop)
    }

    pub async fn pull(&self, image: &str, fetch: &Fetch, limit: Duration) -> Result<()> {
        let mut args = vec!["pull".to_string()];
        args.extend(fetch.args());
        args.push(image.to_string());
        self.with_progress(&args, fetch, limit).await
    }

    pub async fn clone_vm(
        &self,
        source: &str,
        target: &str,
        fetch: &Fetch,
        limit: Duration,
    ) -> Result<()> {
        let mut args = vec!["clone".to_string()];
        args.extend(fetch.args());
        args.extend([source.to_string(), target.to_string()]);
        self.with_progress(&args, fetch, limit).await
    }

    /// `tart pull` or `tart clone` with Tart's progress relayed to the job log.
    async fn with_progress(&self, args: &[String], fetch: &Fetch, limit: Duration) -> Result<()> {
        tracing::debug!(
            "running `{} {}`{}",
            self.exe,
            crate::logging::redact(&args.join(" ")),
            if fetch.creds.is_some() {
                " with registry credentials in its environment"
            } else {
                ""
            }
        );
        let mut cmd = self.command();
        cmd.args(args)
            .env("CI", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(home) = &fetch.home {
            home.apply(&mut cmd);
            // The runner's own TART_REGISTRY_* are the runner user's logins too.
            for name in [
                "TART_REGISTRY_USERNAME",
                "TART_REGISTRY_PASSWORD",
                "TART_REGISTRY_HOSTNAME",
            ] {
                cmd.env_remove(name);
            }
        }
        apply_credentials(&mut cmd, fetch.creds.as_ref());
        if !fetch.auto_prune {
            cmd.env("TART_NO_AUTO_PRUNE", "");
        }
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let relay = async {
            let mut lines = BufReader::new(stdout).lines();
            let mut last_reported: i64 = -1;
            let mut size = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim();
                if let Some(pct) = line.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
                    // One line per 10% keeps the job log readable on multi-GB pulls.
                    if pct / 10 > last_reported / 10 || pct == 100 && last_reported != 100 {
                        eprintln!("  pulling {size}: {pct}%");
                        last_reported = pct;
                    }
                } else if let Some(rest) = line.strip_prefix("pulling disk (") {
                    size = rest
                        .trim_end_matches("...")
                        .trim_end_matches(')')
                        .to_string();
                } else if !line.is_empty() && !line.starts_with("pulling") {
                    eprintln!("  tart: {line}");
                }
            }
        };
        let errors = async {
            let mut text = String::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        };
        let work = async {
            let ((), err_text, status) = tokio::join!(relay, errors, child.wait());
            (err_text, status)
        };
        let (err_text, status) = tokio::time::timeout(limit, work).await.map_err(|_| {
            anyhow!(
                "`tart {}` did not finish within {}s",
                args[0],
                limit.as_secs()
            )
        })?;
        let status = status?;
        if !status.success() {
            let done = Finished {
                code: status.code(),
                stdout: String::new(),
                stderr: err_text,
            };
            bail!("`tart {}` failed: {}", args.join(" "), done.message());
        }
        Ok(())
    }

    /// The VM's IP, waiting up to `wait` seconds as `tart ip --wait` does.
    pub async fn ip(&self, vm: &str, wait_secs: u64, resolver: &str) -> Result<Option<String>> {
        let wait = wait_secs.to_string();
        let done = self
            .capture(
                &["ip", vm, "--wait", &wait, "--resolver", resolver],
                Duration::from_secs(wait_secs.saturating_add(15)),
            )
            .await?;
        if done.ok() {
            let ip = done.stdout.trim().to_string();
            if ip.parse::<std::net::Ipv4Addr>().is_err() {
                bail!("`tart ip` printed `{ip}`, which is not an IPv4 address");
            }
            return Ok(Some(ip));
        }
        // "no IP address found" means not yet; anything else (a missing VM, an unreadable
        // leases file) will not get better by waiting.
        if done.code == Some(2) || !done.message().contains("no IP address found") {
            bail!("`tart ip` failed: {}", done.message());
        }
        Ok(None)
    }

    /// Hard-stops a VM. A VM that is not running is not an error.
    pub async fn stop(&self, vm: &str, timeout_secs: u64) -> Result<()> {
        let t = timeout_secs.to_string();
        let done = self
            .capture(
                &["stop", vm, "--timeout", &t],
                Duration::from_secs(timeout_secs.saturating_add(15)),
            )
            .await?;
        if done.ok()
            || done.message().contains("is not running")
            || done.message().contains("does not exist")
        {
            return Ok(());
        }
        bail!("`tart stop {vm}` failed: {}", done.message())
    }

    /// Deletes a VM. A VM that does not exist is not an error.
    pub async fn delete(&self, vm: &str) -> Result<()> {
        let done = self
            .capture(&["delete", vm], Duration::from_secs(60))
            .await?;
        if done.ok() || done.message().contains("does not exist") {
            return Ok(());
        }
        bail!("`tart delete {vm}` failed: {}", done.message())
    }
}

fn apply_credentials(cmd: &mut Command, creds: Option<&RegistryCredentials>) {
    if let Some(c) = creds {
        cmd.env("TART_REGISTRY_USERNAME", &c.username)
            .env("TART_REGISTRY_PASSWORD", &c.password)
            .env("TART_REGISTRY_HOSTNAME", &c.host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_strips_error_prefix_and_takes_first_line() {
        let f = Finished {
            code: Some(1),
            stdout: String::new(),
            stderr: "Error: boom\nUsage: x\n".into(),
        };
        assert_eq!(f.message(), "boom");
        let f = Finished {
            code: Some(2),
            stdout: String::new(),
            stderr: "the specified VM \"x\" does not exist\n".into(),
        };
        assert_eq!(f.message(), "the specified VM \"x\" does not exist");
    }

    #[test]
    fn list_entries_parse_regardless_of_key_order() {
        let json = r#"[ { "State" : "running", "Name" : "a", "Source" : "local", "Disk" : 50 } ]"#;
        let list: Vec<ListEntry> = serde_json::from_str(json).unwrap();
        assert!(list[0].is_running() && list[0].is_local());
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = RegistryCredentials {
            host: "h".into(),
            username: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
