//! VM names and the per-VM state the driver keeps on the host between stages.
//!
//! A job's VM is named `tartdrv-<runner>-<job id>`: deterministic, so `run` and `cleanup`
//! find it without shared state, and prefixed, so a sweep can tell our VMs from others'.
//! Its record (`<state dir>/vms/<name>/`) holds a lock file that prepare, the
//! supervisor and `tart run` hold for as long as the VM is alive; a VM whose lock is free
//! belongs to no live job and may be swept.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::state_dir::{Dir, StateDir, CONTROL_SOCKET, VMS};
use crate::model::TransportKind;

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

    /// The runner part and the job id of a name this driver made for a job.
    pub fn runner_and_job(&self) -> Option<(&str, u64)> {
        let (runner, job) = self.0.strip_prefix(PREFIX)?.rsplit_once('-')?;
        Some((runner, job.parse().ok()?))
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
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

/// The host-side record of one VM: `<state dir>/vms/<name>/`, reached only through
/// verified handles of the state directory.
#[derive(Debug, Clone)]
pub struct VmState {
    pub name: VmName,
    /// The record's path, for the programs that need one (ssh, the supervisor).
    pub dir: PathBuf,
    root: StateDir,
}

impl VmState {
    pub fn new(root: &StateDir, name: &VmName) -> VmState {
        VmState {
            name: name.clone(),
            dir: root.path().join(VMS).join(name.as_str()),
            root: root.clone(),
        }
    }

    /// Creates the record (mode 0700) and returns its handle.
    pub fn create(&self) -> Result<Dir> {
        self.root.subdir(VMS)?.subdir(self.name.as_str())
    }

    /// The record's handle, if this state directory has one.
    pub fn record(&self) -> Result<Option<Dir>> {
        match self.root.existing_subdir(VMS)? {
            Some(vms) => vms.existing_subdir(self.name.as_str()),
            None => Ok(None),
        }
    }

    fn existing(&self) -> Result<Dir> {
        self.record()?
            .with_context(|| format!("no record of VM {} in {}", self.name, self.dir.display()))
    }

    pub fn exists(&self) -> bool {
        matches!(self.record(), Ok(Some(_)))
    }

    /// Removes the record and everything in it.
    pub fn remove(&self) -> Result<()> {
        match self.root.existing_subdir(VMS)? {
            Some(vms) => vms.remove_subdir(self.name.as_str()),
            None => Ok(()),
        }
    }

    pub fn run_log(&self) -> Result<File> {
        self.existing()?.append(RUN_LOG)
    }
    pub fn forget_run_exit(&self) -> Result<()> {
        self.existing()?.remove(RUN_EXIT)
    }
    pub fn forget_run_log(&self) -> Result<()> {
        self.existing()?.remove(RUN_LOG)
    }
    pub fn ssh_log(&self) -> PathBuf {
        self.dir.join("ssh.log")
    }
    /// Short on purpose: macOS allows 104 bytes for a socket path, ssh adds 17.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }
    /// Whether the control socket exists and is this user's: only then may a stage use it.
    pub fn owns_control_socket(&self) -> bool {
        matches!(self.record(), Ok(Some(dir)) if dir.is_own_socket(CONTROL_SOCKET))
    }

    /// Takes the VM's lock if no other process holds it, without waiting (a sweep, a
    /// record just made). The record must exist.
    pub fn lock_now(&self) -> Result<Option<File>> {
        self.try_lock_with(&|| self.existing())
    }

    /// Takes the VM's lock, waiting up to `wait` while another process (an earlier
    /// attempt's supervisor being stopped, a sweep) holds it. The record must exist. The
    /// wait yields to the runtime between tries, so a stage's SIGTERM is heard during it.
    pub async fn lock(&self, wait: std::time::Duration) -> Result<Option<File>> {
        self.lock_with(wait, || self.existing()).await
    }

    /// Creates the record if needed and takes the VM's lock, waiting up to `wait`. The
    /// holder waited for may be a sweep tearing the VM down, which removes the record
    /// before it lets go of the lock: then the record is created afresh.
    pub async fn create_and_lock(&self, wait: std::time::Duration) -> Result<Option<File>> {
        self.lock_with(wait, || self.create()).await
    }

    /// Removes the record under its lock, waiting up to `wait` for a holder (a retried
    /// prepare, a sweep of another process). False, with the record left for that holder
    /// or a later `gc`, when the lock could not be taken; true when the record is gone.
    pub async fn remove_locked(&self, wait: std::time::Duration) -> Result<bool> {
        if !self.exists() {
            return Ok(true);
        }
        match self.lock(wait).await {
            Ok(Some(lock)) => {
                self.remove()?;
                drop(lock);
                Ok(true)
            }
            Ok(None) => Ok(!self.exists()),
            // The holder removed it while we waited.
            Err(_) if !self.exists() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Removes a job's own record (the one naming the warm VM it ran in) at cleanup or a
    /// cancelled prepare, under its lock. The job's stages are done with it, but another
    /// process may not be: a retried prepare of the job, or a sweep of another job or `gc`
    /// that took it for the record of a gone VM. After 10 s of that the record is left,
    /// with a warning, for that holder or the next `gc`.
    pub async fn forget_job_record(&self) -> Result<()> {
        if !self
            .remove_locked(std::time::Duration::from_secs(10))
            .await?
        {
            eprintln!(
                "WARNING: the record of job VM {} is still locked by another process: left for it, or for the next `gc`",
                self.name
            );
        }
        Ok(())
    }

    /// Waits for the lock of the record `record` opens in short tokio sleeps (never a
    /// thread sleep: the stages run on a single-thread runtime that must go on polling
    /// the SIGTERM listener).
    async fn lock_with(
        &self,
        wait: std::time::Duration,
        record: impl Fn() -> Result<Dir>,
    ) -> Result<Option<File>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(file) = self.try_lock_with(&record)? {
                return Ok(Some(file));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// One try at the lock of the record `record` opens, again from the path whenever the
    /// record there was replaced meanwhile. None when another process holds it.
    fn try_lock_with(&self, record: &impl Fn() -> Result<Dir>) -> Result<Option<File>> {
        let mut replaced = 0;
        loop {
            let dir = record()?;
            match self.lock_record(&dir)? {
                Attempt::Locked(file) => return Ok(Some(file)),
                Attempt::Busy => return Ok(None),
                // A sweep's teardown removed the record between our look and our lock
                // (the lock it let go of is on a file nobody opens any more): the next
                // record is another's to race for, so it is taken afresh.
                Attempt::Replaced if replaced < MAX_REPLACED => replaced += 1,
                Attempt::Replaced => anyhow::bail!(
                    "the record of VM {} at {} was replaced {MAX_REPLACED} times while this process took its lock: another process keeps removing and recreating it; stop the other driver process using this state directory (`ps ax | grep tartdrv`), or use a state directory of this runner's own",
                    self.name,
                    self.dir.display()
                ),
            }
        }
    }

    /// One try at the lock of the record `dir` (a handle opened earlier). A flock belongs
    /// to a file, not to its path: after taking it, the lock file found afresh from the
    /// state directory's root (every level checked, no link followed) must be the one
    /// held, same device and inode, or the lock guards a removed or moved-away record
    /// while another process locks the one at the path.
    fn lock_record(&self, dir: &Dir) -> Result<Attempt> {
        let held = match try_lock(dir, LOCK) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(Attempt::Busy),
            // The record went while we opened its lock (the directory is gone, so no new
            // file can be made in it): the path decides.
            Err(e) => {
                return match self.record()? {
                    Some(now) if now.same_as(dir)? => Err(e),
                    _ => Ok(Attempt::Replaced),
                }
            }
        };
        match self.record()? {
            Some(now) if now.still_names(LOCK, &held)? => Ok(Attempt::Locked(held)),
            _ => Ok(Attempt::Replaced),
        }
    }

    /// Whether no process holds the VM's lock, creating nothing (for `doctor`).
    pub fn lock_is_free(&self) -> bool {
        let Ok(Some(dir)) = self.record() else {
            return true;
        };
        if !dir.exists(LOCK) {
            return true;
        }
        match dir.open(LOCK, libc::O_RDONLY) {
            Ok(file) => try_flock(&file).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Appends how long a phase of the job took, for the summary at cleanup.
    pub fn record_phase(&self, phase: &str, took: std::time::Duration) {
        use std::io::Write;
        if let Ok(mut f) = self.existing().and_then(|d| d.append(TIMINGS)) {
            let _ = writeln!(f, "{phase}\t{:.3}", took.as_secs_f64());
        }
    }

    /// One line on where the job's time went, from the recorded phases.
    pub fn timing_summary(&self) -> Option<String> {
        let text = self.existing().ok()?.read_string(TIMINGS)?;
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
    /// live supervisor past that moment belongs to a job gitlab-runner forgot. The boot's
    /// id goes with it: after a reboot the boot clock restarts near zero, and the record of
    /// a job the reboot ended must not look live for as long as the last boot lasted.
    pub fn set_expiry(&self, after: std::time::Duration) -> Result<()> {
        let at = crate::clock::boot_secs().saturating_add(after.as_secs());
        let text = match super::boot::id() {
            Some(id) => format!("boot {at} {id}"),
            None => format!("boot {at}"),
        };
        self.existing()?
            .write_atomic(EXPIRES, text.as_bytes())
            .context("cannot write the VM's expiry")
    }

    pub fn expired(&self) -> bool {
        self.expiry()
            .is_some_and(|e| e.of_another_boot() || crate::clock::boot_secs() > e.at)
    }

    /// Whether the expiry falls within `margin` from now.
    pub fn expires_within(&self, margin: std::time::Duration) -> bool {
        self.expiry().is_some_and(|e| {
            e.of_another_boot()
                || crate::clock::boot_secs().saturating_add(margin.as_secs()) >= e.at
        })
    }

    /// The expiry on the boot clock. One in any other form (an older driver's wall-clock
    /// time) proves nothing.
    fn expiry(&self) -> Option<Expiry> {
        Expiry::parse(&self.existing().ok()?.read_string(EXPIRES)?)
    }

    pub fn save_connection(&self, c: &Connection) -> Result<()> {
        self.existing()?
            .write_atomic(CONNECTION, &serde_json::to_vec(c)?)
    }

    /// Forgets how an earlier attempt left the VM.
    pub fn forget_connection(&self) -> Result<()> {
        self.existing()?.remove(CONNECTION)
    }

    pub fn load_connection(&self) -> Result<Option<Connection>> {
        let Some(dir) = self.record()? else {
            return Ok(None);
        };
        match dir
            .read(CONNECTION)
            .context("cannot read connection.json")?
        {
            Some(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).context("corrupt connection.json")?,
            )),
            None => Ok(None),
        }
    }

    /// The supervisor's process id, as it recorded it.
    pub fn supervisor_pid(&self) -> Option<i32> {
        self.existing()
            .ok()?
            .read_string(SUPERVISOR_PID)?
            .trim()
            .parse()
            .ok()
    }

    /// How `tart run` ended, once it has: the supervisor's record and Tart's last words.
    pub fn run_ending(&self) -> Option<String> {
        let dir = self.existing().ok()?;
        let exit = dir.read_string(RUN_EXIT)?;
        let log = dir.read_string(RUN_LOG).unwrap_or_default();
        let last = crate::host::tart_message::meaningful_lines(&log);
        // A usage error ends with its usage block: its message is the `Error: ` line.
        let tail = if last.iter().any(|l| l.starts_with("Error: ")) {
            crate::host::tart_message::error_line(&log)
        } else {
            last[last.len().saturating_sub(3)..].join(" | ")
        };
        Some(crate::host::tart_message::explain(if tail.is_empty() {
            exit.trim().to_string()
        } else {
            format!("{} ({})", tail, exit.trim())
        }))
    }
}

/// Files of a VM's record.
pub const LOCK: &str = "lock";
pub const RUN_LOG: &str = "tart-run.log";
pub const RUN_EXIT: &str = "tart-run.exit";
pub const SUPERVISOR_PID: &str = "supervisor.pid";
pub const TART_RUN_PID: &str = "tart-run.pid";
const CONNECTION: &str = "connection.json";
const TIMINGS: &str = "timings";
const EXPIRES: &str = "expires";

/// A record's `expires`: `boot SECS [BOOT-ID]`, a moment on the boot clock of the boot named
/// (records from before boot ids have none, and count as this boot's).
#[derive(Debug, PartialEq, Eq)]
struct Expiry {
    at: u64,
    boot: Option<String>,
}

impl Expiry {
    fn parse(text: &str) -> Option<Expiry> {
        let mut words = text.split_whitespace();
        if words.next()? != "boot" {
            return None;
        }
        let at = words.next()?.parse().ok()?;
        let boot = words.next().map(str::to_string);
        words.next().is_none().then_some(Expiry { at, boot })
    }

    /// A moment of another boot has passed: that boot's jobs ended with it, and its clock
    /// cannot be compared with this one's.
    fn of_another_boot(&self) -> bool {
        matches!((&self.boot, super::boot::id()), (Some(then), Some(now)) if *then != now)
    }
}

/// Takes the lock of file `name` in `dir`, if free. A lock belongs to an inode, not to a
/// name, so a lock taken on a file that was meanwhile deleted (a sweep) and replaced would
/// guard nothing: such a lock is let go and the new file tried.
/// How often in a row a record may be replaced under a lock being taken before that is
/// an error: a sweep replaces it at most once; more is another process fighting over it.
const MAX_REPLACED: u32 = 5;

/// The outcome of one try at a VM's lock.
enum Attempt {
    /// Held, on the lock file at the record's path.
    Locked(File),
    /// Another process holds it.
    Busy,
    /// The record at the path is no longer the one the lock was taken in.
    Replaced,
}

pub fn try_lock(dir: &Dir, name: &str) -> Result<Option<File>> {
    for _ in 0..3 {
        let file = dir.open(name, libc::O_RDWR | libc::O_CREAT)?;
        if !try_flock(&file)? {
            return Ok(None);
        }
        if dir.still_names(name, &file)? {
            return Ok(Some(file));
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
    use crate::host::state_dir::MAX_VM_NAME_LEN;

    #[test]
    fn an_expiry_names_its_boot_and_older_records_without_one_still_parse() {
        assert_eq!(
            Expiry::parse("boot 120 5f0c-aa"),
            Some(Expiry {
                at: 120,
                boot: Some("5f0c-aa".into())
            })
        );
        assert_eq!(
            Expiry::parse("boot 7\n"),
            Some(Expiry { at: 7, boot: None })
        );
        assert_eq!(Expiry::parse("1700000000"), None);
        assert_eq!(Expiry::parse("boot 7 a b"), None);
    }

    #[test]
    fn an_expiry_of_another_boot_has_passed_and_one_of_this_boot_has_not() {
        let far = u64::MAX / 2;
        let other = Expiry {
            at: far,
            boot: Some("another-boot".into()),
        };
        assert!(other.of_another_boot());
        let this = Expiry {
            at: far,
            boot: crate::host::boot::id(),
        };
        assert!(!this.of_another_boot());
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_not_ours() {
        let name = VmName::for_job("abc123", 42);
        assert_eq!(name.as_str(), "tartdrv-abc123-42");
        assert_eq!(VmName::parse_ours("tartdrv-abc123-42"), Some(name));
        assert_eq!(VmName::parse_ours("grtd-proj-1-2-0"), None);
        assert_eq!(VmName::parse_ours("tartdrv-abc-x"), None);
        assert_eq!(VmName::parse_ours("tartdrv--5"), None);
    }

    fn record_in_tmp() -> (tempfile::TempDir, VmState) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let root = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        let vm = VmState::new(&root, &VmName::for_job("abc123", 7));
        (tmp, vm)
    }

    /// A sweep's teardown moves or removes the record while a prepare, holding a handle of
    /// it, takes its lock: that lock is on a file no longer at the path, and a second
    /// process locking the new record there would hold "the same" lock. It is not kept.
    #[test]
    fn a_lock_taken_in_a_record_replaced_meanwhile_is_not_kept() {
        let (tmp, vm) = record_in_tmp();
        let stale = vm.create().unwrap();
        std::fs::rename(&vm.dir, tmp.path().join("moved-away")).unwrap();
        vm.create().unwrap();
        assert!(matches!(vm.lock_record(&stale).unwrap(), Attempt::Replaced));
        let other = vm.lock_now().unwrap().expect("free");
        assert!(vm
            .record()
            .unwrap()
            .unwrap()
            .still_names(LOCK, &other)
            .unwrap());
    }

    /// Removed outright (the teardown's `remove_dir_all`) and created anew: the same.
    #[test]
    fn a_lock_in_a_removed_record_is_not_kept_and_the_new_record_is_locked() {
        let (_tmp, vm) = record_in_tmp();
        let stale = vm.create().unwrap();
        std::fs::remove_dir_all(&vm.dir).unwrap();
        vm.create().unwrap();
        assert!(matches!(vm.lock_record(&stale).unwrap(), Attempt::Replaced));
        vm.create().unwrap();
        let file = vm.lock_now().unwrap().expect("the new record's lock");
        let now = vm.record().unwrap().unwrap();
        assert!(now.still_names(LOCK, &file).unwrap());
        assert!(!vm.lock_is_free());
    }

    /// A retried prepare or another process's sweep holds the record: it is theirs to
    /// finish with, so removing it gives up and leaves it (for them, or a later `gc`).
    #[test]
    fn a_record_whose_lock_another_holder_has_is_not_removed() {
        let (_tmp, vm) = record_in_tmp();
        vm.create().unwrap();
        let held = vm.lock_now().unwrap().expect("free");
        let rt = crate::rt::runtime();
        let removed = rt
            .block_on(vm.remove_locked(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(!removed);
        assert!(vm.exists());
        drop(held);
        assert!(rt
            .block_on(vm.remove_locked(std::time::Duration::ZERO))
            .unwrap());
        assert!(!vm.exists());
    }

    /// The stages run on one thread; a lock wait that slept the thread would keep
    /// gitlab-runner's SIGTERM unheard until it ended. Another branch (the cancel)
    /// must get its turn while the lock is busy.
    #[test]
    fn waiting_for_a_held_lock_lets_a_cancel_branch_run() {
        let (_tmp, vm) = record_in_tmp();
        vm.create().unwrap();
        let _held = vm.lock_now().unwrap().expect("free");
        let cancelled = crate::rt::runtime().block_on(async {
            tokio::select! {
                biased;
                _ = vm.lock(std::time::Duration::from_secs(30)) => false,
                _ = tokio::task::yield_now() => true,
            }
        });
        assert!(cancelled, "the lock wait kept the runtime to itself");
    }

    #[test]
    fn the_longest_name_is_what_the_socket_budget_assumes() {
        let longest = VmName::for_job(&"X".repeat(12), u64::MAX);
        assert_eq!(longest.as_str().len(), MAX_VM_NAME_LEN);
    }
}
