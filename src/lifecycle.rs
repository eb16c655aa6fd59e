//! The VM's life on the host: waiting for it to boot while watching `tart run`, tearing it
//! down, and sweeping VMs of ours that no live job owns.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::settings::Settings;
use crate::supervisor;
use crate::tart::{ListEntry, Tart};
use crate::vm::{open_lock, try_flock, VmName, VmState};

/// Waits for the VM's IP, failing as soon as `tart run` ends, with Tart's own words.
/// `resolver` is Tart's: `dhcp` for NAT, `arp` for bridged networking, where DHCP leases
/// are not the host's to read.
pub async fn wait_for_ip(
    tart: &Tart,
    state: &VmState,
    resolver: &str,
    deadline: Instant,
) -> Result<String> {
    let watch_run = async {
        loop {
            if let Some(ending) = state.run_ending() {
                return ending;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ask_ip = async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            if left == 0 {
                return Ok(None);
            }
            let asked = Instant::now();
            match tart.ip(state.name.as_str(), left.min(60), resolver).await {
                // `tart ip` reads leases and never checks that the VM runs: an address
                // that arrives after `tart run` ended is a stale lease, never ours.
                Ok(Some(_)) if state.run_ending().is_some() => {
                    std::future::pending::<()>().await;
                }
                Ok(Some(ip)) => return Ok(Some(ip)),
                // `--wait` makes Tart poll once a second; an answer that came sooner (a VM
                // Tart does not see running, another resolver) must not turn into a spin.
                Ok(None) => {
                    let pause = Duration::from_secs(1).saturating_sub(asked.elapsed());
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::select! {
        ending = watch_run => bail!("the VM stopped while booting: {ending}"),
        ip = ask_ip => match ip? {
            Some(ip) => Ok(ip),
            None => bail!("the VM got no IP address within the boot timeout: is the image booting (see `tart run` output in the VM's log), or is the DHCP pool exhausted?"),
        },
    }
}

/// Stops and deletes the VM and removes its host-side state. Every step is bounded, and a
/// VM that is already gone is fine.
pub async fn teardown(tart: &Tart, settings: &Settings, state: &VmState) -> Result<()> {
    crate::transport::ssh::close_master(&state.control_socket()).await?;
    let stopped = tart.stop(state.name.as_str(), 10).await;
    // If Tart could not stop it, the processes that hold the VM's lock go the hard way.
    if stopped.is_err() && state.exists() {
        if let Ok(lock) = open_lock(&state.lock_path()) {
            if !try_flock(&lock).unwrap_or(true) {
                supervisor::kill(state);
            }
        }
    }
    // The supervisor releases the lock once `tart run` has exited; delete after that.
    let lock = if state.exists() {
        state.lock(Duration::from_secs(15))?
    } else {
        None
    };
    let deleted = tart.delete(state.name.as_str()).await;
    // Once no process of the VM holds its lock, the state is no longer needed even if Tart
    // failed (say, its binary is gone): a later sweep finds the VM again by name in `tart
    // list`. Keeping the directory would leave one behind for every job until Tart works.
    if state.exists() && (deleted.is_ok() || lock.is_some()) {
        std::fs::remove_dir_all(&state.dir)?;
    }
    drop(lock);
    // The job's host builds directory (its checkout) goes with the VM.
    if let Some(builds) = &settings.builds_dir {
        let dir = builds.join(state.name.as_str());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| {
                format!("cannot remove the job's builds directory {}", dir.display())
            })?;
        }
    }
    deleted
}

/// Removes VMs of ours that no live job owns: their lock is free, so neither a prepare, a
/// supervisor nor `tart run` holds it. `keep` is the calling job's own VM.
pub async fn sweep(
    tart: &Tart,
    settings: &Settings,
    keep: Option<&VmName>,
    dry_run: bool,
) -> Result<Vec<VmName>> {
    let list = tart.list().await?;
    sweep_listed(tart, settings, keep, dry_run, &list).await
}

/// [`sweep`] with the `tart list` the caller already has.
pub async fn sweep_listed(
    tart: &Tart,
    settings: &Settings,
    keep: Option<&VmName>,
    dry_run: bool,
    list: &[ListEntry],
) -> Result<Vec<VmName>> {
    let mut removed = Vec::new();
    for entry in list.iter().filter(|e| e.is_local()) {
        let Some(name) = VmName::parse_ours(&entry.name) else {
            continue;
        };
        if Some(&name) == keep {
            continue;
        }
        let state = VmState::new(&settings.state_dir, &name);
        if state.create().is_err() {
            continue;
        }
        let lock = match state.lock(Duration::ZERO)? {
            Some(lock) => lock,
            // Its supervisor lives, but its job ended long ago: gitlab-runner was killed
            // before cleanup. Stop the supervisor so the VM becomes an ordinary orphan.
            None if state.expired() => {
                tracing::debug!("sweep: {name} outlived its job's timeout");
                if dry_run {
                    removed.push(name);
                    continue;
                }
                supervisor::kill(&state);
                match state.lock(Duration::from_secs(10))? {
                    Some(lock) => lock,
                    None => continue,
                }
            }
            None => {
                tracing::debug!("sweep: {name} belongs to a live job");
                continue;
            }
        };
        tracing::debug!("sweep: {name} has no live job");
        if dry_run {
            removed.push(name);
            drop(lock);
            continue;
        }
        drop(lock);
        match teardown(tart, settings, &state).await {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("WARNING: could not remove orphaned VM {name}: {e:#}"),
        }
    }
    // State of jobs whose VM is already gone.
    if let Ok(entries) = std::fs::read_dir(settings.state_dir.join("vms")) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = VmName::parse_ours(&file_name.to_string_lossy()) else {
                continue;
            };
            if Some(&name) == keep || list.iter().any(|e| e.name == name.as_str()) {
                continue;
            }
            let state = VmState::new(&settings.state_dir, &name);
            if let Some(lock) = state.lock(Duration::ZERO)? {
                if !dry_run {
                    crate::transport::ssh::close_master(&state.control_socket()).await?;
                    std::fs::remove_dir_all(&state.dir)?;
                }
                drop(lock);
            }
        }
    }
    Ok(removed)
}
