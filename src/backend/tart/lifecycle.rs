//! The VM's life on the host: waiting for it to boot while watching `tart run`, tearing it
//! down, and sweeping VMs of this state directory that no live job owns.

use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::backend::types;
use crate::host::ownership::{self, Claim};
use crate::host::state_dir::{StateDir, VMS};
use crate::host::supervisor;
use crate::host::tart::{ListEntry, Tart};
use crate::host::vm::{VmName, VmState};
use crate::settings::Settings;
use crate::warm;
use crate::warm::pool::{self, Member};
use crate::warm::record::EVICTED;

/// Waits for the VM's IP, failing as soon as `tart run` ends, with Tart's own words.
/// `resolver` is Tart's: `dhcp` for NAT, `arp` for bridged networking, where DHCP leases
/// are not the host's to read.
pub async fn wait_for_ip(
    tart: &Tart,
    state: &VmState,
    resolver: &str,
    deadline: Instant,
) -> Result<String> {
    let watch_run = async {
        loop {
            if let Some(ending) = state.run_ending() {
                return ending;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ask_ip = async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            if left == 0 {
                return Ok(None);
            }
            let asked = Instant::now();
            match tart.ip(state.name.as_str(), left.min(60), resolver).await {
                // `tart ip` reads leases and never checks that the VM runs: an address
                // that arrives after `tart run` ended is a stale lease, never ours.
                Ok(Some(_)) if state.run_ending().is_some() => {
                    std::future::pending::<()>().await;
                }
                Ok(Some(ip)) => return Ok(Some(ip)),
                // `--wait` makes Tart poll once a second; an answer that came sooner (a VM
                // Tart does not see running, another resolver) must not turn into a spin.
                Ok(None) => {
                    let pause = Duration::from_secs(1).saturating_sub(asked.elapsed());
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::select! {
        ending = watch_run => bail!("the VM stopped while booting: {ending}"),
        ip = ask_ip => match ip? {
            Some(ip) => Ok(ip),
            None => bail!("the VM got no IP address within the boot timeout: is the image booting (see `tart run` output in the VM's log), or is the DHCP pool exhausted?"),
        },
    }
}

/// Stops and deletes the VM and removes its host-side state. Every step is bounded, and a
/// VM that is already gone is fine. `held` is the VM's lock when the caller (a sweep)
/// already holds it: it is kept to the end, so no retried prepare of the job can take the
/// VM in between.
pub async fn teardown(
    tart: &Tart,
    settings: &Settings,
    state: &VmState,
    held: Option<File>,
) -> Result<()> {
    crate::guest::transport::ssh::close_master(state).await?;
    let stopped = tart.stop(state.name.as_str(), 10).await;
    // If Tart could not stop it, the processes that hold the VM's lock go the hard way.
    if stopped.is_err() && held.is_none() && state.exists() && !state.lock_is_free() {
        supervisor::kill(state);
    }
    // The supervisor releases the lock once `tart run` has exited; delete after that.
    let lock = match held {
        Some(lock) => Some(lock),
        None if state.exists() => state.lock(Duration::from_secs(15)).await?,
        None => None,
    };
    let deleted = tart.delete(state.name.as_str()).await;
    forget_record(state, lock.as_ref())?;
    drop(lock);
    // The job's host builds directory (its checkout) goes with the VM.
    if let Some(builds) = &settings.builds_dir {
        let dir = builds.join(state.name.as_str());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| {
                format!("cannot remove the job's builds directory {}", dir.display())
            })?;
        }
    }
    deleted
}

/// Removes the VM's record once it holds the lock (`lock`), even if Tart failed (say, its
/// binary is gone): a later sweep finds the VM again by name in `tart list`, and keeping
/// the directory would leave one behind for every job until Tart works. Without the lock
/// the record stays, whatever Tart said: it is a live process's (a warm VM's replenisher
/// between its clone and its boot, a supervisor that outlived `tart stop`, a retried
/// prepare), for that process to read, and the sweeps remove it once the lock is free.
fn forget_record(state: &VmState, lock: Option<&File>) -> Result<()> {
    if !state.exists() {
        return Ok(());
    }
    if lock.is_some() {
        return state.remove();
    }
    eprintln!(
        "WARNING: the record of VM {} is still locked by another process: left for it, or for the next `gc`",
        state.name
    );
    Ok(())
}

/// Stops and deletes an unclaimed warm VM, if nobody claims it first (the claim is the
/// pool's: [`EVICTED`] takes it as a job would). Bounded: teardown's
/// own waits.
pub async fn evict(tart: &Tart, settings: &Settings, member: &Member) -> Result<bool> {
    if !pool::take(&member.state, EVICTED)? {
        return Ok(false);
    }
    teardown(tart, settings, &member.state, None).await?;
    Ok(true)
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Orphans removed (or, in a dry run, that would be).
    pub removed: Vec<VmName>,
    /// VMs with our prefix that this state directory cannot prove its own: left alone.
    pub foreign: Vec<VmName>,
}

/// The seam's [`types::Swept`], with the VM names as text.
impl From<Swept> for types::Swept {
    fn from(s: Swept) -> types::Swept {
        let names = |v: Vec<VmName>| v.into_iter().map(|n| n.to_string()).collect();
        types::Swept {
            removed: names(s.removed),
            foreign: names(s.foreign),
        }
    }
}

/// Removes VMs of this state directory that no live job owns (see `ownership`): their
/// record is here and its lock is free (no prepare, supervisor or `tart run` holds it), or
/// their marker names this state directory and their record is lost. `keep` is the calling
/// job's own VM. Other VMs with our prefix are left alone. `list` is the caller's `tart
/// list`; debug lines name no VM: a job's log must not show other jobs.
pub async fn sweep_listed(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    keep: Option<&VmName>,
    dry_run: bool,
    list: &[ListEntry],
) -> Result<Swept> {
    let mut swept = Swept::default();
    for entry in list.iter().filter(|e| e.is_local()) {
        let Some(name) = VmName::parse_ours(&entry.name) else {
            continue;
        };
        if Some(&name) == keep {
            continue;
        }
        let state = VmState::new(root, &name);
        let lock = match ownership::claim(&name, Some(root), root.path()) {
            Claim::None => {
                tracing::debug!("sweep: a VM of another state directory left alone");
                swept.foreign.push(name);
                continue;
            }
            // Its record is lost, so nothing of ours can hold its lock: a fresh one.
            Claim::Marker if dry_run => {
                swept.removed.push(name);
                continue;
            }
            Claim::Marker => match state.create().and_then(|_| state.lock_now())? {
                Some(lock) => lock,
                None => continue,
            },
            Claim::Record => match state.lock_now()? {
                Some(lock) => lock,
                // Its supervisor lives, but its job ended long ago: gitlab-runner was killed
                // before cleanup. Stop the supervisor so the VM becomes an ordinary orphan.
                None if state.expired() || warm::record::abandoned(root, &state) => {
                    tracing::debug!(
                        "sweep: a VM outlived its job's timeout, or no job will use it"
                    );
                    if dry_run {
                        swept.removed.push(name);
                        continue;
                    }
                    supervisor::kill(&state);
                    match state.lock(Duration::from_secs(10)).await? {
                        Some(lock) => lock,
                        None => continue,
                    }
                }
                None => {
                    tracing::debug!("sweep: a VM belongs to a live job");
                    continue;
                }
            },
        };
        tracing::debug!("sweep: a VM has no live job");
        if dry_run {
            swept.removed.push(name);
            continue;
        }
        match teardown(tart, settings, &state, Some(lock)).await {
            Ok(()) => swept.removed.push(name),
            Err(e) => eprintln!(
                "WARNING: could not remove an orphaned VM: {}",
                crate::logging::redact(&format!("{e:#}"))
            ),
        }
    }
    // Records of jobs whose VM is already gone.
    if let Some(vms) = root.existing_subdir(VMS)? {
        for file_name in vms.entries() {
            let Some(name) = VmName::parse_ours(&file_name) else {
                continue;
            };
            let state = VmState::new(root, &name);
            // A job in a claimed warm VM: its VM runs under the warm VM's name.
            let runs_as = warm::record::hands_over_to(root, &state).unwrap_or(name.clone());
            if Some(&name) == keep || list.iter().any(|e| e.name == runs_as.as_str()) {
                continue;
            }
            if let Some(lock) = state.lock_now()? {
                if !dry_run {
                    crate::guest::transport::ssh::close_master(&state).await?;
                    state.remove()?;
                }
                drop(lock);
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_in_tmp() -> (tempfile::TempDir, VmState) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let root = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        let vm = VmState::new(&root, &VmName::for_job("abc123", 7));
        vm.create().unwrap();
        (tmp, vm)
    }

    /// Teardown's wait for the lock ran out (a replenisher still boots the VM, a retried
    /// prepare holds it) although `tart delete` worked: the record is the holder's.
    #[test]
    fn a_teardown_without_the_lock_leaves_the_record_to_its_holder() {
        let (_tmp, vm) = record_in_tmp();
        let _holder = vm.lock_now().unwrap().expect("free");
        forget_record(&vm, None).unwrap();
        assert!(vm.exists());
    }

    #[test]
    fn a_teardown_holding_the_lock_removes_the_record() {
        let (_tmp, vm) = record_in_tmp();
        let lock = vm.lock_now().unwrap().expect("free");
        forget_record(&vm, Some(&lock)).unwrap();
        assert!(!vm.exists());
    }
}
