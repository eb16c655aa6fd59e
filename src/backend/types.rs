//! The values that cross the backend seam: what a backend is given to make a job's VM
//! ([`NewVm`]), what it hands back ([`Made`]) and what a sweep did ([`Swept`], told to
//! the job log by [`report_sweep`]). Backends
//! import them from here; the seam's dispatch in `mod.rs` imports the backends.

use std::fs::File;
use std::time::Duration;

use crate::guest::Share;
use crate::host::state_dir::StateDir;
use crate::host::vm::{Connection, VmState};
use crate::job::request::Request;
use crate::job::JobContext;

/// What a sweep did, by VM name.
#[derive(Debug, Default)]
pub struct Swept {
    /// Orphans removed (or, in a dry run, that would be).
    pub removed: Vec<String>,
    /// VMs that look like ours but are not provably this host's: left alone.
    pub foreign: Vec<String>,
}

/// Tells the job log what prepare's sweep did. Other jobs' names stay out of it (they name
/// other projects' jobs); a failed sweep fails no job.
pub fn report_sweep(swept: anyhow::Result<Swept>) {
    match swept {
        Ok(swept) if !swept.removed.is_empty() => eprintln!(
            "Removed {} orphaned VM(s) left by earlier jobs",
            swept.removed.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("WARNING: orphan sweep failed: {e:#}"),
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
