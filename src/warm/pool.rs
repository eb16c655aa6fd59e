//! The pool's members as the state directory records them, and stopping one.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::record::{self, CLAIM, READY, SPEC};
use super::spec::WarmSpec;
use crate::host::state_dir::StateDir;
use crate::host::vm::VmState;

/// `warm.json`: what the VM was started with, and when (Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRecord {
    pub spec: WarmSpec,
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Started, not yet known to answer a login.
    Booting,
    /// Answered a login at this Unix time; free to claim.
    Ready(u64),
    /// Taken by a job (or being stopped): no longer the pool's.
    Claimed,
    /// No process holds its lock: its boot failed or its supervisor died. An orphan.
    Dead,
}

pub struct Member {
    pub state: VmState,
    pub record: Option<WarmRecord>,
    pub status: Status,
}

impl Member {
    pub fn image(&self) -> Option<&str> {
        self.record.as_ref().map(|r| r.spec.image.as_str())
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every warm VM of this state directory, with what it is doing.
pub fn members(root: &StateDir) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for state in record::warm_records(root)? {
        let Some(dir) = state.record()? else {
            continue;
        };
        let record = dir
            .read(SPEC)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<WarmRecord>(&b).ok());
        let status = if dir.exists(CLAIM) {
            Status::Claimed
        } else if state.lock_is_free() {
            Status::Dead
        } else if let Some(at) = dir.read_string(READY) {
            Status::Ready(at.trim().parse().unwrap_or(0))
        } else {
            Status::Booting
        };
        members.push(Member {
            state,
            record,
            status,
        });
    }
    Ok(members)
}

/// Writes what a new warm VM is started with into its record.
pub fn write_record(state: &VmState, spec: &WarmSpec) -> Result<()> {
    let record = WarmRecord {
        spec: spec.clone(),
        started: now_unix(),
    };
    state
        .create()?
        .write_atomic(SPEC, &serde_json::to_vec(&record)?)
        .context("cannot write the warm VM's record")
}

/// Marks a warm VM reachable: from now on a job may claim it.
pub fn mark_ready(state: &VmState) -> Result<()> {
    state
        .create()?
        .write_atomic(READY, now_unix().to_string().as_bytes())
}

/// Claims the warm VM in `state` for `claimant` (a job's VM name, or
/// [`EVICTED`](record::EVICTED)): true for the one caller that got it. The claim file appears
/// whole or not at all (a hard link of a complete file, which fails if the claim exists), so
/// no reader sees a half-written claim. Each attempt writes a file of its own first (process
/// id and a counter in its name), so attempts in one process, or in many, never share one.
pub fn take(state: &VmState, claimant: &str) -> Result<bool> {
    use std::io::Write;
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(dir) = state.record()? else {
        return Ok(false);
    };
    let n = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = format!("{CLAIM}.{}-{n}.tmp", std::process::id());
    let mut file = dir.open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
    let written = file.write_all(claimant.as_bytes());
    drop(file);
    let linked =
        written.and_then(|()| std::fs::hard_link(dir.path().join(&tmp), dir.path().join(CLAIM)));
    dir.remove(&tmp)?;
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).context("cannot claim a warm VM"),
    }
}

/// How long ago, in words, for the job log and `doctor`.
pub fn ago(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    match d.as_secs() {
        s if s < 90 => format!("{s} s ago"),
        s if s < 90 * 60 => format!("{} min ago", (s + 30) / 60),
        s => format!("{:.1} h ago", s as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn of_many_claims_released_at_once_exactly_one_wins_each_warm_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        let vms: Vec<VmState> = (0..3)
            .map(|_| {
                let state = VmState::new(&root, &record::new_name());
                state.create().unwrap();
                state
            })
            .collect();
        const CLAIMANTS: usize = 8;
        for round in 0..20 {
            for vm in &vms {
                vm.record().unwrap().unwrap().remove(CLAIM).unwrap();
            }
            let start = Arc::new(Barrier::new(CLAIMANTS));
            let won: Vec<Vec<bool>> = std::thread::scope(|s| {
                let threads: Vec<_> = (0..CLAIMANTS)
                    .map(|i| {
                        let (start, vms) = (Arc::clone(&start), &vms);
                        s.spawn(move || {
                            start.wait();
                            vms.iter()
                                .map(|vm| take(vm, &format!("tartdrv-job-{i}")).unwrap())
                                .collect()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for (v, vm) in vms.iter().enumerate() {
                let winners: Vec<usize> = (0..CLAIMANTS).filter(|&i| won[i][v]).collect();
                assert_eq!(winners.len(), 1, "round {round}: VM {v} won by {winners:?}");
                // The claim names the winner, whole.
                assert_eq!(
                    record::claimed_by(vm).as_deref(),
                    Some(format!("tartdrv-job-{}", winners[0]).as_str())
                );
            }
            // No claim attempt leaves a file behind beside the claim.
            for vm in &vms {
                let dir = vm.record().unwrap().unwrap();
                assert!(
                    !dir.entries().iter().any(|e| e.ends_with(".tmp")),
                    "{:?}",
                    dir.entries()
                );
            }
        }
    }
}
