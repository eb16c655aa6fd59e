//! The files that make a VM record a warm VM's, and the hand-over from a job's record to
//! the warm VM it claimed. A leaf module: the sweeps read it, the pool writes it.
//!
//! A warm VM is an ordinary VM record (`<state dir>/vms/tartdrv-warm-<n>/`) whose lock the
//! supervisor holds for the VM's life, so every rule of the sweeps applies to it unchanged:
//! its expiry is the pool's, and a record whose lock is free is an orphan. On top of that:
//! - `warm.json`: what the VM was started with ([`super::spec::WarmSpec`]) and when;
//! - `warm-ready`: written once the VM answered a login, the only VMs a job may claim;
//! - `warm-claim`: created with `O_EXCL` by the one prepare that takes the VM (or by a cold
//!   job or the pool stopping it, as `evicted`): the claim is the file's creation, so two
//!   prepares can never both succeed.
//!
//! The claiming job's own record then holds `claimed-vm`, naming the warm VM, so `run` and
//! `cleanup` find it. The hand-over is trusted only when both sides agree: the job's record
//! names the VM and the VM's claim names the job.

use anyhow::Result;

use crate::host::state_dir::{StateDir, VMS};
use crate::host::vm::{VmName, VmState};

/// The runner part of warm VMs' names: `tartdrv-warm-<n>`.
const WARM: &str = "warm";
pub const SPEC: &str = "warm.json";
pub const READY: &str = "warm-ready";
pub const CLAIM: &str = "warm-claim";
/// In a job's record: the warm VM the job runs in.
pub const CLAIMED_VM: &str = "claimed-vm";
/// The prefix of a warm VM's own slot under `<state dir>/slots/`: `warm-<VM name>`, held
/// by the VM's processes until a claim renames it to a job's general slot.
pub const WARM_SLOT: &str = "warm-";

pub fn warm_slot(vm: &VmName) -> String {
    format!("{WARM_SLOT}{}", vm.as_str())
}

/// What a claim says when nobody will run in the VM: it is being stopped.
pub const EVICTED: &str = "evicted";

/// A fresh, unused warm VM name.
pub fn new_name() -> VmName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Nanoseconds with the process id mixed in: two replenishers never pick the same name.
    let n = nanos ^ (u64::from(std::process::id()) << 48);
    VmName::parse_ours(&format!("{}{WARM}-{n}", crate::host::vm::PREFIX)).expect("a valid name")
}

pub fn is_warm(name: &VmName) -> bool {
    name.as_str()
        .strip_prefix(crate::host::vm::PREFIX)
        .and_then(|rest| rest.strip_prefix(WARM))
        .is_some_and(|rest| rest.starts_with('-'))
}

/// Every warm VM record of this state directory.
pub fn warm_records(root: &StateDir) -> Result<Vec<VmState>> {
    let Some(vms) = root.existing_subdir(VMS)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<VmName> = vms
        .entries()
        .iter()
        .filter_map(|e| VmName::parse_ours(e))
        .filter(is_warm)
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(names.iter().map(|n| VmState::new(root, n)).collect())
}

/// Who claimed the warm VM: a job's VM name, [`EVICTED`], or None while it waits.
pub fn claimed_by(state: &VmState) -> Option<String> {
    let dir = state.record().ok()??;
    dir.read_string(CLAIM).map(|s| s.trim().to_string())
}

fn is_ready(state: &VmState) -> bool {
    matches!(state.record(), Ok(Some(dir)) if dir.exists(READY))
}

/// The warm VM a job's record hands over to, whether or not the VM agrees.
fn pointer(job: &VmState) -> Option<VmName> {
    let dir = job.record().ok()??;
    VmName::parse_ours(dir.read_string(CLAIMED_VM)?.trim()).filter(is_warm)
}

/// The VM a job runs in: the warm VM it claimed, or its own.
pub fn job_vm(root: &StateDir, job: &VmName) -> VmState {
    let own = VmState::new(root, job);
    match pointer(&own) {
        Some(warm) => {
            let warm = VmState::new(root, &warm);
            if claimed_by(&warm).as_deref() == Some(job.as_str()) {
                warm
            } else {
                own
            }
        }
        None => own,
    }
}

/// The warm VM `job`'s record hands over to, when that VM's claim names the job: the
/// record belongs to a live job as long as that VM lives, though no VM carries its name.
pub fn hands_over_to(root: &StateDir, job: &VmState) -> Option<VmName> {
    let warm = pointer(job)?;
    (claimed_by(&VmState::new(root, &warm)).as_deref() == Some(job.name.as_str())).then_some(warm)
}

/// A warm VM nobody will use: claimed, but the claim was an eviction, the claiming job's
/// record (removed by its cleanup) no longer names it, or the claiming prepare died before
/// the job could connect; or still booting while no
/// replenisher is at work to finish it (the one that started it was killed). Such a VM is
/// an orphan even while its supervisor lives.
pub fn abandoned(root: &StateDir, state: &VmState) -> bool {
    if !is_warm(&state.name) {
        return false;
    }
    let Some(job) = claimed_by(state) else {
        return !is_ready(state) && !super::replenish::at_work(root);
    };
    let Some(job) = VmName::parse_ours(&job).map(|job| VmState::new(root, &job)) else {
        return true;
    };
    // Its prepare died between the claim and the job's connection (no prepare holds the
    // job's record, and none recorded a connection): no stage of that job will use it.
    pointer(&job).as_ref() != Some(&state.name)
        || (job.lock_is_free() && matches!(state.load_connection(), Ok(None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_names_are_ours_and_told_apart_from_job_names() {
        let name = new_name();
        assert!(is_warm(&name), "{name}");
        assert_ne!(new_name(), name);
        assert!(!is_warm(&VmName::for_job("abc123", 7)));
        assert!(!is_warm(&VmName::for_job("warmer", 7)));
    }
}
