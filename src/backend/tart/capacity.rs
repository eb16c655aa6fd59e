//! Where warm VMs fit on the host: never in a job's slot, and never in a macOS slot a job
//! is waiting for.
//!
//! A job's VM holds one of the `--concurrency` general slots (`vm-*`) and, for macOS, one
//! of Apple's macOS slots (`macos-*`). A warm VM holds a warm slot of its own instead of a
//! general one (`warm-<its name>`, at most `--warm-pool` of them held), so it never keeps a
//! job from starting, plus a macOS slot like any macOS guest: Apple's limit counts every
//! VM. A claim turns the warm VM into a job's VM in this respect too: the claiming job locks
//! a free general slot `vm-<k>` and renames the warm VM's slot file onto that name
//! (`warm::claim`). A lock belongs to the file, not its name, so the VM's processes, which
//! hold the warm slot's file, now hold `vm-<k>`, and the warm slot is gone: exactly as if
//! the VM had been started in the job's slot.
//!
//! Apple's slots are taken by cold jobs and the replenisher alike. A cold macOS job holds a
//! shared lock on `macos-wanted` from before it stops a warm VM until it holds its slots,
//! and the replenisher takes a macOS slot only under the exclusive lock: so the slot a job
//! freed by stopping a warm VM, or any slot that frees while a job waits, goes to a job.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::lifecycle;
use crate::host::state_dir::{Dir, StateDir, SLOTS};
use crate::host::tart::Tart;
use crate::host::vm::{try_lock, VmName};
use crate::host::{self, Slots, MACOS_SLOT};
use crate::settings::Settings;
use crate::warm::pool::{self, Status};
use crate::warm::record::{warm_slot, WARM_SLOT};

/// Held shared by every cold job that wants a macOS slot, exclusively by the replenisher
/// for the moment it takes one.
const MACOS_WANTED: &str = "macos-wanted";

/// The slots a new warm VM `vm` takes, if the host has room for one now (never waiting), or
/// why it has none.
pub fn take_for_warm(
    settings: &Settings,
    root: &StateDir,
    vm: &VmName,
    macos: bool,
) -> Result<std::result::Result<Slots, String>> {
    let dir = root.subdir(SLOTS)?;
    if held_warm_slots(&dir)? >= settings.warm.pool {
        return Ok(Err("every warm slot is taken".into()));
    }
    let name = warm_slot(vm);
    let warm = try_lock(&dir, &name)?.context("a new warm VM's slot is held by another process")?;
    if !macos {
        return Ok(Ok(Slots { files: vec![warm] }));
    }
    let mac = match lock_nb(&dir, MACOS_WANTED, libc::LOCK_EX)? {
        None => None,
        Some(_gate) => {
            crate::fault::point("replenish:took-the-macos-gate");
            host::take_any(&dir, &host::slot_names(MACOS_SLOT, settings.macos_vm_limit))?
        }
    };
    match mac {
        Some(mac) => Ok(Ok(Slots {
            files: vec![warm, mac],
        })),
        None => {
            dir.remove(&name)?;
            Ok(Err(
                "Apple's macOS VMs are all running or wanted by a job".into()
            ))
        }
    }
}

/// A cold job's slots ([`host::acquire`]). A macOS guest that finds Apple's slots taken
/// stops an unclaimed warm macOS VM and takes its slot, with no warm VM able to take it in
/// between (`macos-wanted`, held until the job has its slots).
pub async fn acquire_for_job(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    macos: bool,
    deadline: Instant,
) -> Result<Slots> {
    if !(settings.warm.enabled() && macos) {
        return host::acquire(&settings.host_limits(), root, macos, deadline).await;
    }
    let limits = settings.host_limits();
    let dir = root.subdir(SLOTS)?;
    let _wanted = want_macos(&dir, deadline).await?;
    let started = Instant::now();
    let mut wait = host::SlotWait::new(true, deadline);
    let general = host::slot_names("vm", settings.concurrency);
    let apple = host::slot_names(MACOS_SLOT, settings.macos_vm_limit);
    loop {
        // Only Apple's limit is a warm VM's to give back; for a general slot a job waits,
        // and a job that has none yet could not use a macOS slot: stopping a warm VM for
        // it would cost the pool its VM for nothing. So the general slot comes first, and
        // is held while a warm VM is stopped (then let go again if the job still cannot
        // start, as `host::try_acquire` does).
        if let Some(vm_slot) = host::take_any(&dir, &general)? {
            if let Some(mac_slot) = host::take_any(&dir, &apple)? {
                return Ok(Slots {
                    files: vec![vm_slot, mac_slot],
                });
            }
            // Checked on every round: a warm VM whose replenisher took its slot just
            // before this job wanted one has a record only a moment later.
            if evict_one(tart, settings, root).await? {
                eprintln!(
                    "Stopped a warm VM to give this job its macOS slot ({:.1}s)",
                    started.elapsed().as_secs_f64()
                );
                crate::fault::point("job:stopped-a-warm-vm");
                if let Some(mac_slot) = host::take_any(&dir, &apple)? {
                    return Ok(Slots {
                        files: vec![vm_slot, mac_slot],
                    });
                }
                continue;
            }
        }
        wait.next(&limits).await?;
    }
}

/// Stops one unclaimed warm macOS VM (ready or booting); whether one was stopped.
async fn evict_one(tart: &Tart, settings: &Settings, root: &StateDir) -> Result<bool> {
    let members = pool::members(root)?;
    let waiting = members.iter().filter(|m| {
        matches!(m.status, Status::Ready(_) | Status::Booting)
            && m.record.as_ref().is_some_and(|r| r.spec.os != "linux")
    });
    for member in waiting {
        match lifecycle::evict(tart, settings, member).await {
            Ok(true) => return Ok(true),
            Ok(false) => continue,
            Err(e) => {
                eprintln!("WARNING: could not stop a warm VM for this job's slot: {e:#}");
                return Ok(false);
            }
        }
    }
    Ok(false)
}

/// The shared hold on `macos-wanted`, waiting out a replenisher's moment with it.
async fn want_macos(dir: &Dir, deadline: Instant) -> Result<File> {
    loop {
        if let Some(held) = lock_nb(dir, MACOS_WANTED, libc::LOCK_SH)? {
            return Ok(held);
        }
        if Instant::now() >= deadline {
            bail!("the warm pool's replenisher held `macos-wanted` in the slots directory until the job's deadline; run `gitlab-runner-tart-driver gc`");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes the warm slots no process holds (their VMs are gone).
pub fn prune(root: &StateDir) -> Result<()> {
    let dir = root.subdir(SLOTS)?;
    held_warm_slots(&dir).map(drop)
}

/// How many warm slots a VM's processes hold; the others are removed on the way.
fn held_warm_slots(dir: &Dir) -> Result<u32> {
    let mut held = 0;
    for name in dir.entries() {
        if !name.starts_with(WARM_SLOT) {
            continue;
        }
        match try_lock(dir, &name)? {
            // Free: its VM is gone. Removed while locked, so nobody holds the removed file.
            Some(_free) => dir.remove(&name)?,
            None => held += 1,
        }
    }
    Ok(held)
}

/// A non-blocking flock (`LOCK_SH` or `LOCK_EX`) on `name`, created if missing.
fn lock_nb(dir: &Dir, name: &str, how: i32) -> Result<Option<File>> {
    let file = dir.open(name, libc::O_RDWR | libc::O_CREAT)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err).context("flock failed")
    }
}
