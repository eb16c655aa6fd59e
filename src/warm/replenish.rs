//! Starting the replenisher (the `warm` subcommand) detached after each claim and each
//! cleanup, one at a time per state directory, and what it remembers between runs: the
//! boots that failed, so a broken image is reported once and not booted again in a loop.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// The pool's log stays under this size: past it, the next replenisher starts a new one
/// and the previous one is kept as `replenish.log.1`.
const LOG_LIMIT: u64 = 1024 * 1024;

/// Starts `gitlab-runner-tart-driver warm --background` with this stage's admin options,
/// in a session of its own (the runner's signals to the stage never reach it), with none of
/// the job's variables and none of gitlab-runner's pipes, logging to the pool's log. It
/// runs in `/` (the stage's working directory is the job's, which gitlab-runner removes),
/// so paths in the options are made absolute first.
pub fn spawn_detached(root: &StateDir) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the driver's own executable")?;
    let cwd = std::env::current_dir().context("cannot read the stage's working directory")?;
    // The stage's own arguments are its admin options (prepare and cleanup take no others).
    let options = absolute_paths(std::env::args_os().skip(2).collect(), &cwd);
    let log = open_log(&dir(root)?)?;
    let mut cmd = Command::new(exe);
    cmd.arg("warm")
        .arg("--background")
        .args(options)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir("/");
    if let Some(config) = std::env::var_os(CONFIG_ENV) {
        cmd.env(CONFIG_ENV, cwd.join(config));
    }
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

/// `--config`'s environment variable.
const CONFIG_ENV: &str = "TART_DRIVER_CONFIG";

/// The pool's log for appending, after moving a log past [`LOG_LIMIT`] aside (replacing the
/// one moved aside before it).
fn open_log(dir: &Dir) -> Result<File> {
    let size = std::fs::metadata(dir.path().join(LOG)).map_or(0, |m| m.len());
    if size > LOG_LIMIT {
        dir.rename(LOG, &format!("{LOG}.1"))?;
    }
    dir.append(LOG)
}

/// The admin options with every host path (an option whose value is a FILE or a DIR, and
/// a tart executable given as a path) made absolute against `cwd`.
fn absolute_paths(args: Vec<OsString>, cwd: &Path) -> Vec<OsString> {
    use clap::Args;
    let cmd = crate::settings::options::Options::augment_args(clap::Command::new("options"));
    let is_path = |long: &str, value: &OsStr| {
        cmd.get_arguments().any(|a| {
            a.get_long() == Some(long)
                && a.get_value_names().is_some_and(|names| {
                    names.iter().any(|n| n == "FILE" || n == "DIR")
                        || (n_is(names, "PATH") && long == "tart-executable" && has_slash(value))
                })
        })
    };
    // An option whose value is the next argument: its long name.
    let takes_value = |long: Option<&str>, short: Option<char>| {
        cmd.get_arguments()
            .find(|a| {
                (long.is_some() && a.get_long() == long)
                    || (short.is_some() && a.get_short() == short)
            })
            .filter(|a| a.get_action().takes_values())
            .and_then(|a| a.get_long())
            .map(str::to_string)
    };
    let mut out = Vec::with_capacity(args.len());
    let mut pending: Option<String> = None;
    for arg in args {
        if let Some(long) = pending.take() {
            out.push(if is_path(&long, &arg) {
                cwd.join(&arg).into_os_string()
            } else {
                arg
            });
            continue;
        }
        let text = arg.to_string_lossy().into_owned();
        if let Some((long, value)) = text.strip_prefix("--").and_then(|t| t.split_once('=')) {
            if is_path(long, OsStr::new(value)) {
                let mut joined = OsString::from(format!("--{long}="));
                joined.push(cwd.join(value));
                out.push(joined);
                continue;
            }
        } else if let Some(long) = text.strip_prefix("--") {
            pending = takes_value(Some(long), None);
        } else if let Some(c) = text
            .strip_prefix('-')
            .filter(|t| t.len() == 1)
            .and_then(|t| t.chars().next())
        {
            pending = takes_value(None, Some(c));
        }
        out.push(arg);
    }
    out
}

fn n_is(names: &[clap::builder::Str], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

fn has_slash(value: &OsStr) -> bool {
    value.as_encoded_bytes().contains(&b'/')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_in_the_options_become_absolute_and_nothing_else_changes() {
        let args: Vec<OsString> = [
            "--config",
            "driver.yaml",
            "--install-gitlab-runner",
            "--state-dir",
            "state",
            "--ssh-key-file=keys/id",
            "--guest-builds-dir",
            "builds",
            "-x",
            "bin/tart",
            "--warm-pool",
            "1",
            "--builds-dir",
            "/abs/builds",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got: Vec<String> = absolute_paths(args, Path::new("/cwd"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "--config",
                "/cwd/driver.yaml",
                "--install-gitlab-runner",
                "--state-dir",
                "/cwd/state",
                "--ssh-key-file=/cwd/keys/id",
                "--guest-builds-dir",
                "builds",
                "-x",
                "/cwd/bin/tart",
                "--warm-pool",
                "1",
                "--builds-dir",
                "/abs/builds",
            ]
        );
    }

    #[test]
    fn a_tart_executable_named_without_a_path_is_still_looked_up_on_path() {
        let args = vec![OsString::from("--tart-executable"), OsString::from("tart")];
        assert_eq!(absolute_paths(args.clone(), Path::new("/cwd")), args);
    }

    #[test]
    fn the_pools_log_is_moved_aside_once_it_outgrows_its_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        let warm = dir(&root).unwrap();
        std::fs::write(warm.path().join(LOG), vec![b'x'; LOG_LIMIT as usize + 1]).unwrap();
        drop(open_log(&warm).unwrap());
        let size = |name: &str| std::fs::metadata(warm.path().join(name)).map(|m| m.len());
        assert_eq!(size(LOG).unwrap(), 0);
        assert_eq!(size(&format!("{LOG}.1")).unwrap(), LOG_LIMIT + 1);
        // Below the limit, the log is appended to.
        std::fs::write(warm.path().join(LOG), b"earlier\n").unwrap();
        drop(open_log(&warm).unwrap());
        assert_eq!(size(LOG).unwrap(), 8);
    }
}
