//! Local Tart: the job's VM is a clone of an OCI image on this Mac, started by a detached
//! supervisor around `tart run`, reached at the IP of its DHCP lease (or through Tart's
//! guest agent), and found again by `tart list` for the sweep.
//!
//! Here: creating a job's VM (`create`), reaching it (`connect`), its boot wait, teardown
//! and sweep (`lifecycle`), the host directories it shares (`shares`), and the warm pool's
//! Tart side: booting the pool (`fill`), slots for warm VMs (`capacity`) and taking over a
//! claimed warm VM (`claimed`). May use: what `backend` may use; never the Orchard backend
//! beside it.

mod capacity;
mod claimed;
pub mod clone;
pub mod connect;
pub mod create;
mod fill;
pub mod lifecycle;
pub mod shares;

use std::fs::File;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::guest::transport::Transport;
use crate::host::state_dir::StateDir;
use crate::host::tart::{ListEntry, Tart};
use crate::host::vm::{Connection, VmName, VmState};
use crate::settings::Settings;
use lifecycle::Swept;

/// Tart on this Mac, as the admin configured it.
pub struct LocalTart<'a> {
    tart: Tart,
    settings: &'a Settings,
}

impl<'a> LocalTart<'a> {
    pub fn new(settings: &'a Settings) -> LocalTart<'a> {
        LocalTart {
            tart: Tart::new(&settings.tart_executable),
            settings,
        }
    }

    pub async fn list(&self) -> Result<Vec<ListEntry>> {
        self.tart.list().await
    }

    pub async fn sweep(
        &self,
        list: &[ListEntry],
        root: &StateDir,
        keep: Option<&VmName>,
        dry_run: bool,
    ) -> Result<Swept> {
        lifecycle::sweep_listed(&self.tart, self.settings, root, keep, dry_run, list).await
    }

    pub fn refill(&self, root: &StateDir) {
        claimed::replenish(self.settings, root);
    }

    pub async fn fill_pool(&self, root: &StateDir, pull: bool) -> Result<()> {
        fill::fill(self.settings, root, pull).await
    }

    pub fn transport(&self, conn: &Connection, state: &VmState) -> Result<Transport> {
        Transport::from_connection(conn, state, &self.tart)
    }

    pub async fn destroy(&self, state: &VmState, held: Option<File>) -> Result<()> {
        lifecycle::teardown(&self.tart, self.settings, state, held).await
    }

    pub async fn prune_images(&self, days: u32) -> Result<()> {
        let days = days.to_string();
        let done = self
            .tart
            .capture(
                &["prune", "--entries", "caches", "--older-than", &days],
                Duration::from_secs(600),
            )
            .await?;
        if !done.ok() {
            bail!("`tart prune` failed: {}", done.message());
        }
        Ok(())
    }
}
