//! Where warm VMs fit on the host: never in a job's slot.
//!
//! A job's VM holds one of the `--concurrency` general slots (`vm-*`) and, for macOS, one
//! of Apple's two macOS slots. A warm VM holds a warm slot (`warm-*`) instead of a general
//! one, so it never keeps a job from starting, plus a macOS slot like any macOS guest: Apple's
//! limit counts every VM. A claimed warm VM keeps its slots as the job's VM (gitlab-runner's
//! `concurrent`, which equals `--concurrency`, bounds the jobs), so there are warm slots for
//! the pool and for every job that may run in a claimed VM. When a cold job finds every
//! macOS slot taken, it stops an unclaimed warm VM first and takes its slot.

use std::time::Instant;

use anyhow::Result;

use super::lifecycle;
use crate::host::state_dir::{StateDir, SLOTS};
use crate::host::tart::Tart;
use crate::host::{self, Slots, MACOS_SLOT};
use crate::settings::Settings;
use crate::warm::pool::{self, Status};

/// The slots a new warm VM takes, if the host has room for one now (never waiting).
pub fn take_for_warm(settings: &Settings, root: &StateDir, macos: bool) -> Result<Option<Slots>> {
    let dir = root.subdir(SLOTS)?;
    let warm = host::slot_names("warm", settings.warm.pool + settings.concurrency);
    let Some(slot) = host::take_any(&dir, &warm)? else {
        return Ok(None);
    };
    if !macos {
        return Ok(Some(Slots { files: vec![slot] }));
    }
    let apple = host::slot_names(MACOS_SLOT, settings.macos_vm_limit);
    Ok(host::take_any(&dir, &apple)?.map(|mac| Slots {
        files: vec![slot, mac],
    }))
}

/// A cold job's slots ([`host::acquire`]), after stopping an unclaimed warm macOS VM when
/// a macOS guest would otherwise wait for Apple's limit.
pub async fn acquire_for_job(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    macos: bool,
    deadline: Instant,
) -> Result<Slots> {
    if settings.warm.enabled() && macos && !macos_slot_free(settings, root)? {
        let started = Instant::now();
        let members = pool::members(root)?;
        let waiting = members.iter().filter(|m| {
            matches!(m.status, Status::Ready(_) | Status::Booting)
                && m.record.as_ref().is_some_and(|r| r.spec.os != "linux")
        });
        for member in waiting {
            match lifecycle::evict(tart, settings, member).await {
                Ok(true) => {
                    eprintln!(
                        "Stopped a warm VM to give this job its macOS slot ({:.1}s)",
                        started.elapsed().as_secs_f64()
                    );
                    break;
                }
                Ok(false) => continue,
                Err(e) => {
                    eprintln!("WARNING: could not stop a warm VM for this job's slot: {e:#}");
                    break;
                }
            }
        }
    }
    host::acquire(&settings.host_limits(), root, macos, deadline).await
}

/// Whether one of Apple's macOS slots is free right now (taken and let go at once).
fn macos_slot_free(settings: &Settings, root: &StateDir) -> Result<bool> {
    let dir = root.subdir(SLOTS)?;
    let apple = host::slot_names(MACOS_SLOT, settings.macos_vm_limit);
    Ok(host::take_any(&dir, &apple)?.is_some())
}
