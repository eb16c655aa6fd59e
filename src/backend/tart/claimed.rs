//! Making a job's VM through the warm pool: claim a booted VM that matches the job and
//! connect to it as the job. [`LocalTart::create`](super::LocalTart) tries this before its
//! cold path, which runs unchanged whenever no warm VM is claimed.

use std::fs::File;
use std::time::{Duration, Instant};

use crate::backend::types::Made;
use crate::failure::Failure;
use crate::guest::identity::Identity;
use crate::host::state_dir::StateDir;
use crate::host::tart::Tart;
use crate::host::vm::VmState;
use crate::job::request::Request;
use crate::job::JobContext;
use crate::logging::phase_done;
use crate::settings::Settings;
use crate::warm::claim::{self, Claimed, Outcome};

/// Claims a warm VM for the job, telling the job log which way it goes and why. `job` is
/// the job's own record, which prepare has created and locked.
pub async fn try_warm(
    settings: &Settings,
    root: &StateDir,
    request: &Request,
    state: &VmState,
    job_limit: Duration,
) -> anyhow::Result<Option<Claimed>> {
    let t = Instant::now();
    // The same expiry a cold VM gets: the job's timeout and an hour for cleanup.
    let expiry = job_limit + Duration::from_secs(3600);
    let outcome = claim::claim(settings, root, state, request, expiry).await?;
    claim::report(&outcome, t);
    // The pool is short from now on (a claim took its VM; a cold job found none that
    // fits): its replacement boots beside this job's own boot and work, not after them.
    if !matches!(outcome, Outcome::Cold(None)) {
        replenish(settings, root);
    }
    match outcome {
        Outcome::Claimed(claimed) => {
            state.record_phase("warm claim", t.elapsed());
            Ok(Some(claimed))
        }
        Outcome::Cold(_) => Ok(None),
    }
}

/// The rest of making the job's VM when a warm one was claimed: the job's own login (its
/// user, its transport) and the identity proof the VM was started with. Guest setup is
/// the caller's, as for a VM of the job's own.
pub async fn connect_claimed(
    tart: &Tart,
    settings: &Settings,
    job: &JobContext,
    request: &Request,
    claimed: Claimed,
    held: File,
) -> Result<Made, Failure> {
    let state = claimed.state;
    let identity = Identity::existing(&state)?;
    let shares = super::shares::shares(settings, job, state.name.as_str())?;
    let resolver = if settings.bridged.is_some() {
        "arp"
    } else {
        "dhcp"
    };
    let t = Instant::now();
    let deadline = crate::clock::deadline_after(request.boot_timeout);
    let conn = super::connect::connect(
        tart,
        &state,
        request,
        &identity,
        &claimed.os,
        resolver,
        deadline,
    )
    .await?;
    phase_done(
        &format!(
            "Connected to the warm VM over {}",
            super::connect::transport_name(&conn)
        ),
        t,
    );
    state.record_phase("connect", t.elapsed());
    Ok(Made {
        state,
        conn,
        shares,
        held,
    })
}

/// Starts the replenisher, detached, when this host keeps a warm pool: a claim took a VM
/// from it, a cleanup gave its slot back. Its failure costs the pool, never the job.
pub fn replenish(settings: &Settings, root: &StateDir) {
    if !settings.warm.enabled() || settings.cache_dir.is_some() {
        return;
    }
    if let Err(e) = crate::warm::replenish::spawn_detached(root) {
        eprintln!("WARNING: could not start the warm pool's replenisher: {e:#}");
    }
}
