//! Prepare's side of the pool: take a booted, never-used VM that matches everything the
//! job's VM would have been started with, or say why the job boots its own.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::pool::{self, Status};
use super::record::CLAIMED_VM;
use super::replenish;
use super::spec::WarmSpec;
use crate::host::state_dir::StateDir;
use crate::host::vm::VmState;
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
}

pub enum Outcome {
    Claimed(Claimed),
    /// The job boots its own VM; the reason is for the job log (None: no pool here).
    Cold(Option<String>),
}

/// Claims a warm VM for `job` (whose record exists and whose lock prepare holds). On
/// success the job's record names the VM, the VM's claim names the job, and the VM's
/// expiry is the job's: from here on it is the job's VM in every respect.
pub async fn claim(
    settings: &Settings,
    root: &StateDir,
    job: &VmState,
    request: &Request,
    job_expiry: Duration,
) -> Result<Outcome> {
    if !settings.warm.enabled() {
        return Ok(Outcome::Cold(None));
    }
    let cold = |why: String| Ok(Outcome::Cold(Some(why)));
    if settings.cache_dir.is_some() {
        return cold("a cache dir is configured, and a VM booted before its job cannot share the job's project cache".into());
    }
    let wanted = match WarmSpec::for_job(settings, request) {
        Ok(spec) => spec,
        Err(why) => return cold(why),
    };
    // A matching VM still booting is worth waiting for: it is ready sooner than a VM of
    // the job's own, which would start its boot from the beginning.
    let deadline = Instant::now() + request.boot_timeout;
    let mut told = false;
    let (booting, differences) = loop {
        let members = pool::members(root)?;
        let mut booting = 0;
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
                    continue;
                }
                _ => continue,
            };
            if member.state.expires_within(EXPIRY_MARGIN) {
                continue;
            }
            // The job's record names the VM before the claim exists: a claim never names a
            // job whose record does not point back (the sweeps take that VM for abandoned).
            job.create()?
                .write_atomic(CLAIMED_VM, member.state.name.as_str().as_bytes())?;
            if !pool::take(&member.state, job.name.as_str())? {
                continue;
            }
            member.state.set_expiry(job_expiry)?;
            return Ok(Outcome::Claimed(Claimed {
                state: member.state.clone(),
                os: record.spec.os.clone(),
                ready_for: pool::now_unix().saturating_sub(ready_at),
            }));
        }
        // Only a replenisher at work finishes a boot; without one, a booting VM never will.
        if booting == 0 || !replenish::at_work(root) || Instant::now() >= deadline {
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
