//! Which of the `tartdrv-*` VMs on this host a state directory may remove.
//!
//! Several state directories can share one Tart home: two runner services, an admin's `gc`
//! with another `--state-dir`, a driver whose default moved. A name with our prefix proves
//! nothing about who runs the VM, so a sweep removes a VM only with proof that it is this
//! state directory's: its record is here (then its lock tells whether a job still lives), or
//! it carries an owner marker that names this state directory (its record was lost, as after
//! a host reboot that cleared it). Every other VM is left alone and reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::state_dir::StateDir;
use crate::host::vm::{VmName, VmState};

/// The marker's name inside the VM's directory in Tart's home.
const MARKER: &str = "tartdrv-owner";

/// Why a state directory may treat a VM as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This state directory has the VM's record.
    Record,
    /// No record, but the VM's owner marker names this state directory.
    Marker,
    /// Neither: another state directory's VM, or not provably ours.
    None,
}

/// A local VM's directory in Tart's home.
pub fn vm_dir(vm: &str) -> Option<PathBuf> {
    crate::host::tart_home::home().map(|home| home.join("vms").join(vm))
}

/// How a state directory names itself in markers: its resolved path.
fn identity(root: &Path) -> String {
    std::fs::canonicalize(root)
        .unwrap_or_else(|_| root.to_path_buf())
        .display()
        .to_string()
}

/// Marks a freshly cloned VM as `root`'s, so that `root`'s sweeps can remove it even if its
/// record is lost, and no other state directory's sweep touches it.
pub fn mark(vm: &VmName, root: &StateDir) -> Result<()> {
    let dir = vm_dir(vm.as_str())
        .context("cannot find Tart's home: TART_HOME is not set and the user database has no home for this user; set TART_HOME")?;
    std::fs::write(dir.join(MARKER), identity(root.path())).with_context(|| {
        format!(
            "cannot mark VM {vm} as this state directory's in {}",
            dir.display()
        )
    })
}

/// Whether the VM's marker names the state directory at `root`.
pub fn marked_for(vm: &VmName, root: &Path) -> bool {
    let Some(dir) = vm_dir(vm.as_str()) else {
        return false;
    };
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|owner| owner.trim() == identity(root))
}

/// What proof `root` has that the VM is its own. `root` is None when the state directory
/// does not exist (yet): then only a marker can name it.
pub fn claim(vm: &VmName, root: Option<&StateDir>, root_path: &Path) -> Claim {
    if root.is_some_and(|r| VmState::new(r, vm).exists()) {
        Claim::Record
    } else if marked_for(vm, root_path) {
        Claim::Marker
    } else {
        Claim::None
    }
}
