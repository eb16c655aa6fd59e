//! Getting rid of this runner's VMs on the controller: one job's VM at cleanup, and the
//! sweep of those left behind (failed, or older than any job can be).
//!
//! Orchard keeps a `failed` VM until someone deletes it, and a VM whose driver died holds a
//! worker slot forever (spec/orchard.md §2.5, §7.7), so every prepare, cleanup and `gc`
//! sweeps. Only names this runner made are touched ([`RunnerTag::parse`]): the controller
//! has no namespaces, and the service account could delete anyone's VMs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};

use super::client::{ApiError, Client};
use super::name::RunnerTag;
use super::types::{Vm, VmStatus};

/// How long a delete keeps trying through network errors and 5xx (a controller restart).
pub const DELETE_BOUND: Duration = Duration::from_secs(60);
/// What a delete whose deadline has passed still gets: one request's connect and answer.
const LAST_TRY: Duration = Duration::from_secs(10);

/// Deletes one VM. A VM that is already gone is fine, so this can run after every failed
/// prepare attempt and again at cleanup; network errors and 5xx are retried with back-off
/// for a minute.
pub async fn delete(client: &Client, name: &str) -> Result<()> {
    delete_until(client, name, Instant::now() + DELETE_BOUND).await
}

/// [`delete`] within a deadline shared with other deletes (one attempt once it has passed),
/// so that deleting many VMs while the controller is down takes one bound, not one each.
pub async fn delete_until(client: &Client, name: &str, deadline: Instant) -> Result<()> {
    let mut pause = Duration::from_secs(1);
    loop {
        // One call may retry for two minutes: it gets what is left, or one last try.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(LAST_TRY);
        let answer = tokio::time::timeout(left, client.delete_vm(name))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::Network(format!(
                    "no answer within {}s",
                    left.as_secs()
                )))
            });
        match answer {
            Ok(()) => return Ok(()),
            Err(e @ (ApiError::Network(_) | ApiError::Server { .. }))
                if Instant::now() + pause < deadline =>
            {
                tracing::debug!("deleting Orchard VM {name}: {e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "cannot delete Orchard VM {name}: it may still hold a worker slot; `gitlab-runner-tart-driver gc --backend orchard` retries"
                )))
            }
        }
    }
}

/// The VMs of these runners (`tags`) that nobody needs any more: `failed` ones, and ones
/// older than `max_age`; never one a live job holds (`live`: the VMs whose job's record is
/// locked, or whose job's time is not up), however old, since its job's cleanup deletes it.
pub fn stale<'a>(
    all: &'a [Vm],
    tags: &[RunnerTag],
    max_age: Duration,
    now: i64,
    live: &BTreeSet<String>,
) -> Vec<&'a Vm> {
    let oldest = now - i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    all.iter()
        .filter(|vm| tags.iter().any(|t| t.parse(&vm.name).is_some()))
        .filter(|vm| !live.contains(&vm.name))
        .filter(|vm| vm.status == VmStatus::Failed || vm.created_at.is_some_and(|t| t.0 < oldest))
        .collect()
}

/// This runner's VMs for one job (every prepare attempt's), except `keep`.
pub fn of_job<'a>(all: &'a [Vm], tag: &RunnerTag, job_id: u64, keep: Option<&str>) -> Vec<&'a Vm> {
    all.iter()
        .filter(|vm| tag.parse(&vm.name).is_some_and(|(job, _)| job == job_id))
        .filter(|vm| Some(vm.name.as_str()) != keep)
        .collect()
}

/// Deletes `doomed` (or, in a dry run, only names them) by `deadline`; the names removed.
pub async fn remove(
    client: &Client,
    doomed: &[&Vm],
    dry_run: bool,
    deadline: Instant,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for vm in doomed {
        if !dry_run {
            delete_until(client, &vm.name, deadline).await?;
        }
        removed.push(vm.name.clone());
    }
    Ok(removed)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::types::Timestamp;
    use super::*;

    fn vm(name: &str, created: i64, status: VmStatus) -> Vm {
        Vm {
            name: name.into(),
            created_at: Some(Timestamp(created)),
            status,
            ..Vm::default()
        }
    }

    #[test]
    fn the_sweep_takes_only_this_runners_failed_or_too_old_vms() {
        let ours = RunnerTag::new("gl", "runner a").unwrap();
        let theirs = RunnerTag::new("gl", "runner b").unwrap();
        let now = 100_000;
        let all = [
            vm(ours.vm_name(1, 1).as_str(), now - 10, VmStatus::Running),
            vm(ours.vm_name(2, 1).as_str(), now - 10, VmStatus::Failed),
            vm(ours.vm_name(3, 1).as_str(), now - 7200, VmStatus::Running),
            vm(ours.vm_name(4, 1).as_str(), now - 7200, VmStatus::Pending),
            vm(theirs.vm_name(5, 1).as_str(), now - 7200, VmStatus::Failed),
            vm("someone-elses-vm", now - 7200, VmStatus::Failed),
        ];
        let live = BTreeSet::from([ours.vm_name(4, 1).to_string()]);
        let doomed: Vec<&str> = stale(
            &all,
            std::slice::from_ref(&ours),
            Duration::from_secs(3600),
            now,
            &live,
        )
        .iter()
        .map(|v| v.name.as_str())
        .collect();
        assert_eq!(
            doomed,
            [ours.vm_name(2, 1).as_str(), ours.vm_name(3, 1).as_str()]
        );
    }

    #[test]
    fn a_live_jobs_vm_is_never_swept_however_old_or_failed() {
        let tag = RunnerTag::new("gl", "r").unwrap();
        let now = 100_000;
        let all = [
            vm(tag.vm_name(1, 1).as_str(), now - 7200, VmStatus::Running),
            vm(tag.vm_name(2, 1).as_str(), now - 10, VmStatus::Failed),
        ];
        let live: BTreeSet<String> = all.iter().map(|v| v.name.clone()).collect();
        let doomed = stale(&all, &[tag], Duration::from_secs(3600), now, &live);
        assert!(doomed.is_empty(), "{doomed:?}");
    }

    #[test]
    fn gc_sweeps_every_listed_runner_and_no_other() {
        let a = RunnerTag::new("gl", "runner a").unwrap();
        let b = RunnerTag::new("gl", "runner b").unwrap();
        let c = RunnerTag::new("gl", "runner c").unwrap();
        let all = [
            vm(a.vm_name(1, 1).as_str(), 0, VmStatus::Failed),
            vm(b.vm_name(1, 1).as_str(), 0, VmStatus::Failed),
            vm(c.vm_name(1, 1).as_str(), 0, VmStatus::Failed),
        ];
        let doomed: Vec<&str> = stale(
            &all,
            &[a.clone(), b.clone()],
            Duration::from_secs(3600),
            10,
            &BTreeSet::new(),
        )
        .iter()
        .map(|v| v.name.as_str())
        .collect();
        assert_eq!(doomed, [a.vm_name(1, 1).as_str(), b.vm_name(1, 1).as_str()]);
    }

    #[test]
    fn a_jobs_earlier_attempts_are_found_by_job_id() {
        let tag = RunnerTag::new("gl", "r").unwrap();
        let all = [
            vm(tag.vm_name(7, 1).as_str(), 0, VmStatus::Failed),
            vm(tag.vm_name(7, 2).as_str(), 0, VmStatus::Running),
            vm(tag.vm_name(70, 1).as_str(), 0, VmStatus::Running),
        ];
        let keep = tag.vm_name(7, 2);
        let found: Vec<&str> = of_job(&all, &tag, 7, Some(keep.as_str()))
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(found, [tag.vm_name(7, 1).as_str()]);
    }
}
