//! Prepare's side of the pool: take a booted, never-used VM that matches everything the
//! job's VM would have been started with, or say why the job boots its own.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::pool::{self, Status};
use super::record::{self, CLAIMED_VM};
use super::replenish;
use super::spec::WarmSpec;
use crate::host;
use crate::host::state_dir::{StateDir, SLOTS};
use crate::host::vm::{VmName, VmState};
use crate::job::request::Request;
use crate::settings::Settings;

/// A warm VM that never gets claimed this close to its expiry: the sweep may be stopping it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(120);

/// The warm VM a job took.
pub struct Claimed {
    pub state: VmState,
    pub os: String,
    /// Seconds since the VM first answered a login.
    pub ready_for: u64,
    /// Whether the VM now holds the job's general slot. False when its warm slot was gone:
    /// its processes had ended, so the job gives it up.
    pub in_job_slot: bool,
}

pub enum Outcome {
    Claimed(Claimed),
    /// The job boots its own VM; the reason is for the job log (None: no pool here).
    Cold(Option<String>),
}

/// When the job waits for its VM: a booting warm VM is waited for until `boot` (the
/// deadline of the job's whole wait for a booted VM) or until that VM's own boot timeout
/// ends, whichever comes first; a general slot until `slot`. A wait for a general slot is
/// no part of the boot: the claim moves `boot` later by as long as it waited for one, as
/// the cold path starts its boot timeout once it holds its slots.
pub struct Deadlines {
    pub boot: Instant,
    pub slot: Instant,
}

/// Claims a warm VM for `job` (whose record exists and whose lock prepare holds). On
/// success the job's record names the VM, the VM's claim names the job, the VM holds a
/// general slot as a job's VM does, and its expiry is the job's: from here on it is the
/// job's VM in every respect. `source` is the cached image the job may have (its approved
/// digest, or a local VM's name): a warm VM cloned from anything else does not match.
pub async fn claim(
    settings: &Settings,
    root: &StateDir,
    job: &VmState,
    request: &Request,
    source: &str,
    job_expiry: Duration,
    deadlines: &mut Deadlines,
) -> Result<Outcome> {
    if !settings.warm.enabled() {
        return Ok(Outcome::Cold(None));
    }
    let cold = |why: String| Ok(Outcome::Cold(Some(why)));
    if settings.cache_dir.is_some() {
        return cold("a cache dir is configured, and a VM booted before its job cannot share the job's project cache".into());
    }
    let wanted = match WarmSpec::for_job(settings, request, source) {
        Ok(spec) => spec,
        Err(why) => return cold(why),
    };
    // A matching VM still booting is worth waiting for: it is ready sooner than a VM of
    // the job's own, which would start its boot from the beginning. Not beyond its own
    // boot timeout (its replenisher gives up on it then), nor the job's.
    let mut told = false;
    let mut job_slot: Option<(String, std::fs::File)> = None;
    let (booting, differences) = 'scan: loop {
        let members = pool::members(root)?;
        let mut booting = 0;
        let mut boot_ends = Instant::now();
        let mut differences: Vec<&'static str> = Vec::new();
        for member in &members {
            let Some(record) = &member.record else {
                continue;
            };
            let waiting = matches!(member.status, Status::Ready(_) | Status::Booting);
            let differs = record.spec.differences(&wanted);
            for d in differs.iter().filter(|_| waiting) {
                if !differences.contains(d) {
                    differences.push(d);
                }
            }
            let ready_at = match member.status {
                Status::Ready(at) if differs.is_empty() => at,
                Status::Booting if differs.is_empty() => {
                    booting += 1;
                    let left = (record.started + request.boot_timeout.as_secs())
                        .saturating_sub(pool::now_unix());
                    boot_ends = boot_ends.max(Instant::now() + Duration::from_secs(left));
                    continue;
                }
                _ => continue,
            };
            if member.state.expires_within(EXPIRY_MARGIN) {
                continue;
            }
            // A claimed VM is a job's VM: it needs a general slot as a cold one does.
            let Some((slot, _)) = &job_slot else {
                let waiting_since = Instant::now();
                let held = take_job_slot(settings, root, deadlines.slot).await?;
                deadlines.boot += waiting_since.elapsed();
                match held {
                    Some(held) => job_slot = Some(held),
                    None => {
                        return cold("no VM slot was free for it before the job's deadline".into())
                    }
                }
                // Waiting for the slot may have taken a while: look at the pool again.
                continue 'scan;
            };
            // The job's record names the VM before the claim exists: a claim never names a
            // job whose record does not point back (the sweeps take that VM for abandoned).
            job.create()?
                .write_atomic(CLAIMED_VM, member.state.name.as_str().as_bytes())?;
            crate::fault::point("claim:named-the-warm-vm");
            if !pool::take(&member.state, job.name.as_str())? {
                continue;
            }
            crate::fault::point("claim:took-the-warm-vm");
            member.state.set_expiry(job_expiry)?;
            let in_job_slot = hand_over(root, &member.state.name, slot)?;
            crate::fault::point("claim:moved-the-slot");
            return Ok(Outcome::Claimed(Claimed {
                state: member.state.clone(),
                os: record.spec.os.clone(),
                ready_for: pool::now_unix().saturating_sub(ready_at),
                in_job_slot,
            }));
        }
        // Only a replenisher at work finishes a boot; without one, a booting VM never will.
        let until = boot_ends.min(deadlines.boot);
        if booting == 0 || !replenish::at_work(root) || Instant::now() >= until {
            break (booting, differences);
        }
        if !told {
            eprintln!("Waiting for a warm VM that is still booting...");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(dir) = job.record()? {
        dir.remove(CLAIMED_VM)?;
    }
    if booting > 0 {
        return cold(format!(
            "the matching warm VM did not become ready within the boot timeout ({}s)",
            request.boot_timeout.as_secs()
        ));
    }
    if !differences.is_empty() {
        return cold(format!(
            "the warm VMs differ from this job's in {}",
            differences.join(", ")
        ));
    }
    cold("the pool has no warm VM right now".into())
}

/// The job log's line for the outcome, with the time the decision took.
pub fn report(outcome: &Outcome, started: Instant) {
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Claimed(c) => eprintln!(
            "Claimed a warm VM booted {} ({took:.1}s)",
            pool::ago(c.ready_for)
        ),
        Outcome::Cold(Some(why)) => {
            eprintln!("No warm VM for this job: {why}; booting a fresh one ({took:.1}s)")
        }
        Outcome::Cold(None) => {}
    }
}

/// A general slot for a job that claims a warm VM, with its name, waiting for one as a
/// cold job would (the claimed VM stays in its macOS slot).
async fn take_job_slot(
    settings: &Settings,
    root: &StateDir,
    deadline: Instant,
) -> Result<Option<(String, std::fs::File)>> {
    let dir = root.subdir(SLOTS)?;
    let general = host::slot_names("vm", settings.concurrency);
    let mut told = false;
    loop {
        if let Some(slot) = host::take_named(&dir, &general)? {
            return Ok(Some(slot));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        if !told {
            eprintln!(
                "Waiting for a free VM slot: this host runs at most {} VMs, and all are busy...",
                settings.concurrency
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Moves a claimed warm VM from its warm slot into the job's general slot `job_slot`
/// (whose lock the caller holds and drops afterwards): the VM's processes hold the file,
/// which from now on carries the general slot's name. False when the warm VM holds no warm
/// slot any more (its processes died, and the pass that pruned it took the file).
fn hand_over(root: &StateDir, vm: &VmName, job_slot: &str) -> Result<bool> {
    root.subdir(SLOTS)?.rename(&record::warm_slot(vm), job_slot)
}
