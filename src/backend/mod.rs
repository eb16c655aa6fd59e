//! The backend seam: the one place that chooses how a job's VM is made, waited for until
//! usable, addressed, destroyed, and listed for the sweep. The stages talk to [`Backend`]
//! and never to Tart directly; what they share across backends (the VM's state directory
//! and lock, the guest's transports with one SSH ControlMaster per job, guest setup) stays
//! outside it.
//!
//! Two backends: local Tart ([`tart`]), and an Orchard fleet ([`crate::orchard::fleet`]),
//! whose VMs are reached through ssh's `ProxyCommand`
//! ([`crate::transport::ssh::Target::Proxy`]) instead of an IP. The admin picks one with
//! `--backend`; no job variable can.
//!
//! May use: everything below the stages (settings, the job's request, host and guest
//! modules). Used by: the stages.

pub mod tart;

use std::fs::File;
use std::time::Duration;

use anyhow::Result;

use crate::failure::Failure;
use crate::guest::Share;
use crate::job::JobContext;
use crate::request::Request;
use crate::settings::Settings;
use crate::state_dir::StateDir;
use crate::transport::{RemoteExit, Transport};
use crate::vm::{Connection, VmName, VmState};

use crate::orchard::fleet::Fleet;
use crate::orchard::settings::Backend as Kind;

/// Where the job's VMs come from, chosen by the admin's settings (never by a job).
pub enum Backend<'a> {
    /// Tart on this Mac.
    Tart(tart::LocalTart<'a>),
    /// Macs behind an Orchard controller.
    Orchard(Fleet<'a>),
}

/// The VMs a backend sees, read once so that one listing serves a stage's sweep and its
/// own look-ups (prepare's leftover check and pull policy).
pub enum Listing {
    Tart(Vec<crate::tart::ListEntry>),
    Orchard(Vec<crate::orchard::types::Vm>),
}

/// What a sweep did, by VM name.
#[derive(Debug, Default)]
pub struct Swept {
    /// Orphans removed (or, in a dry run, that would be).
    pub removed: Vec<String>,
    /// VMs that look like ours but are not provably this host's: left alone.
    pub foreign: Vec<String>,
}

impl From<crate::lifecycle::Swept> for Swept {
    fn from(s: crate::lifecycle::Swept) -> Swept {
        let names = |v: Vec<VmName>| v.into_iter().map(|n| n.to_string()).collect();
        Swept {
            removed: names(s.removed),
            foreign: names(s.foreign),
        }
    }
}

/// What a backend needs to make one job's VM.
pub struct NewVm<'a> {
    pub job: &'a JobContext,
    pub request: &'a Request,
    pub root: &'a StateDir,
    /// The VM's host-side record, created and locked by the caller.
    pub state: &'a VmState,
    /// The VM's lock, held until prepare ends (see [`Made::held`]).
    pub lock: File,
    /// The job's timeout: the bound of waits that can last as long as the job may.
    pub job_limit: Duration,
}

/// A VM that is booted and reachable over its open connection.
pub struct Made {
    /// The VM's host-side record: the job's own, or (local Tart) the warm VM it claimed.
    pub state: VmState,
    pub conn: Connection,
    /// Host directories shared into the guest, for guest setup to link or mount.
    pub shares: Vec<Share>,
    /// The VM's lock: prepare holds it to its end, so no sweep takes the VM meanwhile.
    /// Never read: dropping it is what lets go.
    #[allow(dead_code)]
    pub held: File,
}

impl<'a> Backend<'a> {
    /// The backend the admin configured (an Orchard one reads its token file here).
    pub fn for_settings(settings: &'a Settings) -> Result<Backend<'a>> {
        Ok(match settings.backend {
            Kind::Tart => Backend::Tart(tart::LocalTart::new(settings)),
            Kind::Orchard => Backend::Orchard(Fleet::new(settings)?),
        })
    }

    /// The VMs this backend sees now.
    pub async fn list(&self) -> Result<Listing> {
        match self {
            Backend::Tart(b) => Ok(Listing::Tart(b.list().await?)),
            Backend::Orchard(b) => Ok(Listing::Orchard(b.list().await?)),
        }
    }

    /// Removes VMs of this state directory that no live job owns (never `keep`, the
    /// calling job's own), and records of VMs that are gone.
    pub async fn sweep(
        &self,
        listing: &Listing,
        root: &StateDir,
        keep: Option<&VmName>,
        dry_run: bool,
    ) -> Result<Swept> {
        match (self, listing) {
            (Backend::Tart(b), Listing::Tart(list)) => {
                Ok(b.sweep(list, root, keep, dry_run).await?.into())
            }
            (Backend::Orchard(b), Listing::Orchard(list)) => {
                b.sweep(list, root, keep, dry_run).await
            }
            _ => unreachable!("a listing is its backend's"),
        }
    }

    /// Makes the job's VM (replacing a leftover of an earlier attempt), waits until it is
    /// usable and opens the job's connection to it.
    pub async fn create(&self, listing: &Listing, new: NewVm<'_>) -> Result<Made, Failure> {
        match (self, listing) {
            (Backend::Tart(b), Listing::Tart(list)) => b.create(list, new).await,
            (Backend::Orchard(b), Listing::Orchard(list)) => b.create(list, new).await,
            _ => unreachable!("a listing is its backend's"),
        }
    }

    /// The record of the VM a job runs in: its own, or (local Tart) the warm VM it claimed.
    pub fn job_vm(&self, root: &StateDir, job: &VmName) -> VmState {
        match self {
            Backend::Tart(_) => crate::warm::record::job_vm(root, job),
            Backend::Orchard(_) => VmState::new(root, job),
        }
    }

    /// After a prepare or a cleanup: lets the backend top up what it keeps ready ahead of
    /// jobs (local Tart's warm pool, replenished by a detached process). Never fails a job.
    pub fn refill(&self, root: &StateDir) {
        match self {
            Backend::Tart(b) => b.refill(root),
            Backend::Orchard(_) => {}
        }
    }

    /// One pass over what the backend keeps ready ahead of jobs (local Tart's warm pool):
    /// retire what no job can use, then boot up to `--warm-pool`. The caller holds the
    /// replenisher's lock (`warm::replenish::lock`).
    pub async fn fill_pool(&self, root: &StateDir, pull: bool) -> Result<()> {
        match self {
            Backend::Tart(b) => b.fill_pool(root, pull).await,
            Backend::Orchard(_) => Ok(()),
        }
    }

    /// The transport over the connection prepare left for the later stages (an Orchard
    /// VM's connection, cut by the controller meanwhile, is opened again once).
    pub async fn transport(&self, conn: &Connection, state: &VmState) -> Result<Transport> {
        match self {
            Backend::Tart(b) => b.transport(conn, state),
            Backend::Orchard(b) => b.transport(conn, state).await,
        }
    }

    /// How a stage's ending reads for this backend. An Orchard VM outlives its connection
    /// through the controller (a restart, a cut WebSocket), so a lost connection is a broken
    /// one there: the VM is fine, the script's fate unknown.
    pub fn interpret(&self, exit: RemoteExit) -> RemoteExit {
        match (self, exit) {
            (Backend::Orchard(_), RemoteExit::Lost(why)) => RemoteExit::Broken(format!(
                "{why} (the Orchard controller carries it: a controller restart or a cut connection)"
            )),
            (_, exit) => exit,
        }
    }

    /// Closes the VM's connection, destroys the VM and removes its host-side state;
    /// idempotent. `held` is the VM's lock when the caller already holds it.
    pub async fn destroy(&self, state: &VmState, held: Option<File>) -> Result<()> {
        match self {
            Backend::Tart(b) => b.destroy(state, held).await,
            Backend::Orchard(b) => b.destroy(state, held).await,
        }
    }

    /// Removes cached images not used for `days` days (`gc --prune-images-older-than`).
    pub async fn prune_images(&self, days: u32) -> Result<()> {
        match self {
            Backend::Tart(b) => b.prune_images(days).await,
            Backend::Orchard(b) => b.prune_images(days).await,
        }
    }
}
