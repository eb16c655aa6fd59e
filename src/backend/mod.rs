//! The backend seam: the one place that chooses how a job's VM is made, waited for until
//! usable, addressed, destroyed, and listed for the sweep. The stages talk to [`Backend`]
//! and never to Tart directly; what they share across backends (the VM's state directory
//! and lock, the guest's transports with one SSH ControlMaster per job, guest setup) stays
//! outside it.
//!
//! Two backends: local Tart ([`tart`]), and an Orchard fleet ([`orchard`]),
//! whose VMs are reached through ssh's `ProxyCommand`
//! ([`crate::guest::transport::ssh::Target::Proxy`]) instead of an IP. The admin picks one with
//! `--backend`; no job variable can.
//!
//! May use: every layer below the commands: the warm pool's records, the job's request,
//! settings, Orchard's client, guest, host and the shared kinds. Used by: the stages.

pub mod orchard;
pub mod tart;
pub mod types;

use std::fs::File;

use anyhow::Result;

use crate::failure::Failure;
use crate::guest::transport::{RemoteExit, Transport};
use crate::host::state_dir::StateDir;
use crate::host::vm::{Connection, VmName, VmState};
use crate::settings::Settings;

use crate::orchard::settings::Backend as Kind;
use orchard::Fleet;
pub use types::{Made, NewVm, Swept};

/// Where the job's VMs come from, chosen by the admin's settings (never by a job).
pub enum Backend<'a> {
    /// Tart on this Mac.
    Tart(tart::LocalTart<'a>),
    /// Macs behind an Orchard controller.
    Orchard(Fleet<'a>),
}

/// The VMs a backend sees, for a sweep.
pub enum Listing {
    Tart(Vec<crate::host::tart::ListEntry>),
    Orchard(Vec<crate::orchard::types::Vm>),
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
    /// usable and opens the job's connection to it. Orphaned VMs of this state directory
    /// are swept on the way: local Tart once `tart run` is started (the job's boot need not
    /// wait for other VMs' teardown), Orchard first, from the listing its leftover check
    /// reads anyway.
    pub async fn create(&self, new: NewVm<'_>) -> Result<Made, Failure> {
        match self {
            Backend::Tart(b) => b.create(new).await,
            Backend::Orchard(b) => {
                let list = b.list().await?;
                types::report_sweep(b.sweep(&list, new.root, Some(&new.state.name), false).await);
                b.create(&list, new).await
            }
        }
    }

    /// The record of the VM a job runs in: its own, or (local Tart) the warm VM it claimed.
    pub fn job_vm(&self, root: &StateDir, job: &VmName) -> VmState {
        match self {
            Backend::Tart(_) => crate::warm::record::job_vm(root, job),
            Backend::Orchard(_) => VmState::new(root, job),
        }
    }

    /// After a cleanup: lets the backend top up what it keeps ready ahead of jobs (local
    /// Tart's warm pool, replenished by a detached process; prepare's `create` starts that
    /// itself as soon as it sees the pool short). Never fails a job.
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
