//! Making a job's VM through the warm pool: claim a booted VM that matches the job and
//! connect to it as the job. [`LocalTart::create`](super::LocalTart) tries this before its
//! cold path, which runs unchanged whenever no warm VM is claimed.

use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::guest::identity::Identity;
use crate::guest::Share;
use crate::host::state_dir::StateDir;
use crate::host::tart::Tart;
use crate::host::vm::{Connection, VmState};
use crate::job::request::Request;
use crate::job::JobContext;
use crate::logging::phase_done;
use crate::settings::Settings;
use crate::warm::claim::{self, Claimed, Outcome};

/// How long the job's own login into a claimed warm VM may take: the VM answered a login
/// before it joined the pool, so this is well under a second unless the guest hung since.
const CLAIMED_LOGIN_LIMIT: Duration = Duration::from_secs(20);

/// Claims a warm VM for the job, telling the job log which way it goes and why. `job` is
/// the job's own record, which prepare has created and locked. `boot_deadline` ends the
/// job's whole wait for a booted VM: waiting for a warm VM spends from it, waiting for a
/// free job slot does not (the claim moves it later by that wait, as the cold path starts
/// its boot timeout once it holds its slot).
/// `source` is what the job's own VM would be cloned from (the approved digest, see
/// `registry_access::Fetched::source`): a warm VM must have been cloned from the same.
pub async fn try_warm(
    settings: &Settings,
    root: &StateDir,
    request: &Request,
    source: &str,
    state: &VmState,
    job_limit: Duration,
    boot_deadline: &mut Instant,
) -> anyhow::Result<Option<Claimed>> {
    let t = Instant::now();
    // The same expiry a cold VM gets: the job's timeout and an hour for cleanup.
    let expiry = job_limit + Duration::from_secs(3600);
    let mut deadlines = claim::Deadlines {
        boot: *boot_deadline,
        slot: crate::clock::deadline_after(job_limit),
    };
    let outcome = claim::claim(
        settings,
        root,
        state,
        request,
        source,
        expiry,
        &mut deadlines,
    )
    .await;
    *boot_deadline = deadlines.boot;
    let outcome = outcome?;
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
/// the caller's, as for a VM of the job's own. A claimed VM that does not let the job in
/// by `boot_deadline` (or within [`CLAIMED_LOGIN_LIMIT`]) is the caller's to give up.
pub async fn connect_claimed(
    tart: &Tart,
    settings: &Settings,
    job: &JobContext,
    request: &Request,
    claimed: &Claimed,
    boot_deadline: Instant,
) -> Result<(Connection, Vec<Share>), Failure> {
    if !claimed.in_job_slot {
        return Err(Failure::System(anyhow::anyhow!(
            "its processes had ended before the claim"
        )));
    }
    let state = &claimed.state;
    let identity = Identity::existing(state)?;
    let shares = super::shares::shares(settings, job, state.name.as_str())?;
    let resolver = if settings.bridged.is_some() {
        "arp"
    } else {
        "dhcp"
    };
    let t = Instant::now();
    let deadline = boot_deadline.min(crate::clock::deadline_after(CLAIMED_LOGIN_LIMIT));
    crate::fault::point("claim:connecting");
    let conn = super::connect::connect(
        tart,
        state,
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
    Ok((conn, shares))
}

/// Gives up a claimed warm VM the job could not use: the VM goes (it is the job's, no other
/// job may have it), and the job's record no longer hands over to it.
pub async fn give_up(
    tart: &Tart,
    settings: &Settings,
    job: &VmState,
    claimed: Claimed,
) -> anyhow::Result<()> {
    super::lifecycle::teardown(tart, settings, &claimed.state, None).await?;
    if let Some(dir) = job.record()? {
        dir.remove(crate::warm::record::CLAIMED_VM)?;
    }
    Ok(())
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
