//! VM names and the per-VM state the driver keeps on the host between stages.
//!
//! A job's VM is named `tartdrv-<runner>-<job id>`: deterministic, so `run` and `cleanup`
//! find it without shared state, and prefixed, so a sweep can tell our VMs from others'.
//! Its state directory (`<state dir>/vms/<name>/`) holds a lock file that prepare, the
//! supervisor and `tart run` hold for as long as the VM is alive; a VM whose lock is free
//! belongs to no live job and may be swept.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::settings::TransportKind;

pub const PREFIX: &str = "tartdrv-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmName(String);

impl VmName {
    pub fn for_job(runner_token: &str, job_id: u64) -> VmName {
        VmName(format!("{PREFIX}{runner_token}-{job_id}"))
    }

    /// Accepts only names this driver could have made.
    pub fn parse_ours(name: &str) -> Option<VmName> {
        let rest = name.strip_prefix(PREFIX)?;
        let (runner, job) = rest.rsplit_once('-')?;
        let ok = !runner.is_empty()
            && runner.chars().all(|c| c.is_ascii_alphanumeric())
            && job.parse::<u64>().is_ok();
        ok.then(|| VmName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates `dir` (mode 0700) and refuses one that another user owns or others can write:
/// it holds sockets and passwords in transit.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir)?;
    // SAFETY: getuid never fails.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "state directory {} must be owned by uid {uid} and not writable by others; remove it or set --state-dir",
            dir.display()
        );
    }
    Ok(())
}

/// How prepare left the VM for the later stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub transport: TransportKind,
    pub os: String,
    pub shell: String,
    pub ip: Option<String>,
    pub user: Option<String>,
    /// Environment for the job's scripts (TZ, ...).
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// The host-side files of one VM.
#[derive(Debug, Clone)]
pub struct VmState {
    pub name: VmName,
    pub dir: PathBuf,
}

impl VmState {
    pub fn new(state_root: &Path, name: &VmName) -> VmState {
        VmState {
            name: name.clone(),
            dir: state_root.join("vms").join(name.as_str()),
        }
    }

    pub fn create(&self) -> Result<()> {
        private_dir(&self.dir)
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn run_log(&self) -> PathBuf {
        self.dir.join("tart-run.log")
    }
    pub fn run_exit(&self) -> PathBuf {
        self.dir.join("tart-run.exit")
    }
    pub fn connection_file(&self) -> PathBuf {
        self.dir.join("connection.json")
    }
    pub fn ssh_log(&self) -> PathBuf {
        self.dir.join("ssh.log")
    }
    /// Short on purpose: macOS allows 104 bytes for a socket path, ssh adds 17.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ssh")
    }

    /// Takes the VM's lock, waiting while another process (an earlier attempt's
    /// supervisor being stopped, a sweep) holds it.
    pub fn lock(&self, wait: std::time::Duration) -> Result<Option<File>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(file) = try_lock_path(&self.lock_path())? {
                return Ok(Some(file));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Appends how long a phase of the job took, for the summary at cleanup.
    pub fn record_phase(&self, phase: &str, took: std::time::Duration) {
        use std::io::Write;
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("timings"))
        {
            let _ = writeln!(f, "{phase}\t{:.3}", took.as_secs_f64());
        }
    }

    /// One line on where the job's time went, from the recorded phases.
    pub fn timing_summary(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("timings")).ok()?;
        let mut phases: Vec<(String, f64, usize)> = Vec::new();
        for line in text.lines() {
            let Some((phase, secs)) = line.split_once('\t') else {
                continue;
            };
            let Ok(secs) = secs.parse::<f64>() else {
                continue;
            };
            let key = if phase.starts_with("stage ") {
                "run stages".to_string()
            } else {
                phase.to_string()
            };
            match phases.iter_mut().find(|(k, _, _)| *k == key) {
                Some(entry) => {
                    entry.1 += secs;
                    entry.2 += 1;
                }
                None => phases.push((key, secs, 1)),
            }
        }
        let parts: Vec<String> = phases
            .iter()
            .map(|(k, s, n)| {
                if *n > 1 {
                    format!("{k} ({n}) {s:.1}s")
                } else {
                    format!("{k} {s:.1}s")
                }
            })
            .collect();
        (!parts.is_empty()).then(|| format!("Where the job's time went: {}", parts.join(", ")))
    }

    /// Records when this VM's job must be over (its timeout, with a margin for cleanup),
    /// on the boot clock: a wall-clock jump must not make a live job look forgotten. A
    /// live supervisor past that moment belongs to a job gitlab-runner forgot.
    pub fn set_expiry(&self, after: std::time::Duration) -> Result<()> {
        let at = crate::clock::boot_secs().saturating_add(after.as_secs());
        std::fs::write(self.dir.join("expires"), format!("boot {at}"))
            .context("cannot write the VM's expiry")
    }

    pub fn expired(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.dir.join("expires")) else {
            return false;
        };
        // An expiry in any other form (an older driver's wall-clock time) proves nothing.
        let Some(Ok(at)) = text.trim().strip_prefix("boot ").map(str::parse::<u64>) else {
            return false;
        };
        crate::clock::boot_secs() > at
    }

    pub fn save_connection(&self, c: &Connection) -> Result<()> {
        let tmp = self.dir.join("connection.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(c)?)?;
        std::fs::rename(&tmp, self.connection_file())?;
        Ok(())
    }

    pub fn load_connection(&self) -> Result<Option<Connection>> {
        match std::fs::read(self.connection_file()) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).context("corrupt connection.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read connection.json"),
        }
    }

    /// How `tart run` ended, once it has: the supervisor's record and Tart's last words.
    pub fn run_ending(&self) -> Option<String> {
        let exit = std::fs::read_to_string(self.run_exit()).ok()?;
        let log = std::fs::read_to_string(self.run_log()).unwrap_or_default();
        let last = crate::tart_message::meaningful_lines(&log);
        // A usage error ends with its usage block: its message is the `Error: ` line.
        let tail = if last.iter().any(|l| l.starts_with("Error: ")) {
            crate::tart_message::error_line(&log)
        } else {
            last[last.len().saturating_sub(3)..].join(" | ")
        };
        Some(crate::isolation::explain(if tail.is_empty() {
            exit.trim().to_string()
        } else {
            format!("{} ({})", tail, exit.trim())
        }))
    }
}

pub fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))
}

/// Takes the lock of the file at `path`, if free. A lock belongs to an inode, not to a path,
/// so a lock taken on a file that was meanwhile deleted (a sweep, macOS's periodic cleanup of
/// /tmp) and replaced would guard nothing: such a lock is let go and the new file tried.
pub fn try_lock_path(path: &Path) -> Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..3 {
        let file = open_lock(path)?;
        if !try_flock(&file)? {
            return Ok(None);
        }
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            _ => continue,
        }
    }
    Ok(None)
}

/// Non-blocking exclusive flock. The kernel drops it when every process holding the open
/// file description has exited, so a crash can never leak it.
pub fn try_flock(file: &File) -> Result<bool> {
    // SAFETY: flock on a valid descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err).context("flock failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_not_ours() {
        let name = VmName::for_job("abc123", 42);
        assert_eq!(name.as_str(), "tartdrv-abc123-42");
        assert_eq!(VmName::parse_ours("tartdrv-abc123-42"), Some(name));
        assert_eq!(VmName::parse_ours("grtd-proj-1-2-0"), None);
        assert_eq!(VmName::parse_ours("tartdrv-abc-x"), None);
        assert_eq!(VmName::parse_ours("tartdrv--5"), None);
    }
}
