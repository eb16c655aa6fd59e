//! The simulated Mac's Virtualization framework, as other processes see it: each running VM
//! is a `com.apple.Virtualization.VirtualMachine` XPC process (the guest's init carries that
//! executable here), and Apple's two places for macOS guests, which macOS 26 sometimes
//! fails to give back after a guest shut itself down (the stale-slot bug: starts fail at
//! the limit, with fewer macOS VMs running, until the Mac reboots).

use crate::util::{sim_host, try_flock};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a Mac keeps the per-VM process, under the simulated Mac's root.
pub const VM_PROCESS: &str = "System/Library/Frameworks/Virtualization.framework/Versions/A/XPCServices/com.apple.Virtualization.VirtualMachine.xpc/Contents/MacOS/com.apple.Virtualization.VirtualMachine";

/// The executable a guest's init runs as: this simulator, linked (or copied) to the path of
/// Virtualization's VM process under `$TART_SIM_HOST`, so that a process listing shows one
/// such process per running VM of this simulated Mac, and none of another one.
pub fn vm_process_exe(simulator: &Path) -> Result<PathBuf, String> {
    let path = sim_host().join(VM_PROCESS);
    if path.is_file() {
        return Ok(path);
    }
    let dir = path.parent().expect("a nested path");
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".vm-process.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(simulator, &tmp).is_err() {
        fs::copy(simulator, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Whether a process listing on this simulated Mac misses Virtualization's VM processes
/// (`$TART_SIM_HOST/vm-processes-hidden` exists): guests then run as the simulator itself,
/// as when the listing cannot tell a VM's XPC process by its executable (another macOS
/// release's path, a process whose executable it may not read). Only the count is wrong:
/// the VMs run and hold their places.
pub fn vm_processes_hidden() -> bool {
    sim_host().join("vm-processes-hidden").exists()
}

/// Places of Apple's macOS limit that the stale-slot bug holds on this simulated Mac:
/// `$TART_SIM_HOST/stale-macos-slots` (a number, 0 to 2; none by default).
fn stale_slots() -> usize {
    fs::read_to_string(sim_host().join("stale-macos-slots"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Takes one of the host's two macOS-guest places. They count every macOS guest of the
/// simulated Mac, whatever its TART_HOME, as Apple's quota counts every user's VMs.
pub fn take_macos_slot(name: &str) -> Option<File> {
    let dir = sim_host().join("macos-slots");
    for i in stale_slots()..2 {
        let p = dir.join(format!("slot{i}"));
        if let Some(mut f) = try_flock(&p) {
            let _ = f.set_len(0);
            let _ = f.write_all(name.as_bytes());
            return Some(f);
        }
    }
    None
}
