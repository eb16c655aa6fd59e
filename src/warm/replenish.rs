//! Starting the replenisher (the `warm` subcommand) detached after each claim and each
//! cleanup, one at a time per state directory, and what it remembers between runs: the
//! boots that failed, so a broken image is reported once and not booted again in a loop.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::state_dir::{Dir, StateDir};
use crate::host::vm::try_lock;

/// `<state dir>/warm/`: the replenisher's lock, log and failures.
const WARM_DIR: &str = "warm";
const LOCK: &str = "replenish.lock";
const LOG: &str = "replenish.log";
const FAILURES: &str = "failures.json";

pub fn dir(root: &StateDir) -> Result<Dir> {
    root.subdir(WARM_DIR)
}

/// Starts `gitlab-runner-tart-driver warm --background` with this stage's admin options,
/// in a session of its own (the runner's signals to the stage never reach it), with none of
/// the job's variables and none of gitlab-runner's pipes, logging to the pool's log.
pub fn spawn_detached(root: &StateDir) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the driver's own executable")?;
    // The stage's own arguments are its admin options (prepare and cleanup take no others).
    let options: Vec<_> = std::env::args_os().skip(2).collect();
    let log = dir(root)?.append(LOG)?;
    let mut cmd = Command::new(exe);
    cmd.arg("warm")
        .arg("--background")
        .args(options)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir("/");
    for name in crate::model::job_env_names() {
        cmd.env_remove(name);
    }
    // SAFETY: only setsid, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .context("cannot start the warm pool's replenisher")?;
    Ok(())
}

/// The replenisher's lock: one fills the pool at a time; the others wait their turn (up to
/// `wait`), since each was started for a change the one before may not have seen.
pub fn lock(root: &StateDir, wait: Duration) -> Result<Option<File>> {
    let dir = dir(root)?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(lock) = try_lock(&dir, LOCK)? {
            return Ok(Some(lock));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether a replenisher holds the lock now (creating nothing).
pub fn at_work(root: &StateDir) -> bool {
    let Ok(Some(dir)) = root.existing_subdir(WARM_DIR) else {
        return false;
    };
    if !dir.exists(LOCK) {
        return false;
    }
    match dir.open(LOCK, libc::O_RDONLY) {
        Ok(file) => !crate::host::vm::try_flock(&file).unwrap_or(true),
        Err(_) => false,
    }
}

/// A boot that failed: of which image digest, when (Unix seconds), and Tart's words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub digest: String,
    pub at: u64,
    pub message: String,
}

pub fn failures(root: &StateDir) -> BTreeMap<String, Failure> {
    root.existing_subdir(WARM_DIR)
        .ok()
        .flatten()
        .and_then(|d| d.read(FAILURES).ok().flatten())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn record_failure(root: &StateDir, image: &str, failure: Failure) -> Result<()> {
    let mut all = failures(root);
    all.insert(image.to_string(), failure);
    dir(root)?.write_atomic(FAILURES, &serde_json::to_vec_pretty(&all)?)
}

pub fn forget_failures(root: &StateDir) -> Result<()> {
    dir(root)?.remove(FAILURES)
}
