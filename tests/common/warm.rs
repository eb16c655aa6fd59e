//! The warm pool's test helpers: a bed with a pool, its records, and emptying it.

use std::path::PathBuf;
use std::time::Duration;

use super::{pids_with_args, wait_until, Bed, LINUX};

pub const BROKEN: &str = "ghcr.io/cirruslabs/broken:latest";

/// A host keeping one warm Linux VM.
pub fn warm_bed() -> Bed {
    Bed::new().option(["--warm-pool", "1", "--warm-image", LINUX])
}

/// The warm VMs' records, with what each is doing.
pub fn warm_records(bed: &Bed) -> Vec<PathBuf> {
    bed.vm_state_dirs()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tartdrv-warm-")
        })
        .collect()
}

pub fn ready_unclaimed(bed: &Bed) -> Vec<PathBuf> {
    let mut ready: Vec<PathBuf> = warm_records(bed)
        .into_iter()
        .filter(|p| p.join("warm-ready").exists() && !p.join("warm-claim").exists())
        .collect();
    ready.sort();
    ready
}

/// Runs `warm` in the foreground with the bed's options (plus `extra`).
pub fn warm(bed: &Bed, extra: &[&str]) -> (bool, String) {
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["warm", "--state-dir", state.as_str()];
    args.extend(bed.options.iter().map(String::as_str));
    args.extend(extra);
    let out = bed.driver(&args);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log)
}

/// Waits for the replenishers the stages started in the background to finish.
pub fn settle(bed: &Bed) {
    let state = bed.state_dir.display().to_string();
    assert!(
        wait_until(Duration::from_secs(90), || pids_with_args(&[
            "warm",
            "--background",
            &state
        ])
        .is_empty()),
        "a background replenisher did not finish"
    );
}

/// Empties the pool the admin's way (`warm --warm-pool 0`) and checks nothing is left.
pub fn drain_and_check(bed: &Bed) {
    settle(bed);
    let state = bed.state_dir.display().to_string();
    let out = bed.driver(&["warm", "--state-dir", &state, "--warm-pool", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The VM names `tart run` started, in order.
pub fn started_vms(bed: &Bed) -> Vec<String> {
    bed.sim
        .invocations()
        .into_iter()
        .filter(|i| i.args.first().map(String::as_str) == Some("run"))
        .filter_map(|i| i.args.get(1).cloned())
        .collect()
}

pub fn prepared_vm(log: &str) -> String {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("VM ")
                .and_then(|r| r.split(" prepared").next())
        })
        .unwrap_or_else(|| panic!("no 'VM ... prepared' line in:\n{log}"))
        .to_string()
}

/// A fault point of the driver's test build (`src/fault.rs`) at which a stage waits until
/// the test lets it go on, or at which it kills itself.
pub struct FaultPoint {
    pub point: String,
    dir: tempfile::TempDir,
}

impl FaultPoint {
    pub fn new(point: &str) -> FaultPoint {
        FaultPoint {
            point: point.into(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The environment that holds a stage at the point.
    pub fn pause(&self) -> Vec<(String, String)> {
        vec![
            ("TARTDRV_FAULT_AT".into(), self.point.clone()),
            ("TARTDRV_FAULT".into(), "pause".into()),
            (
                "TARTDRV_FAULT_DIR".into(),
                self.dir.path().display().to_string(),
            ),
        ]
    }

    /// The environment that kills a stage (SIGKILL, as a crash) at the point.
    pub fn kill(&self) -> Vec<(String, String)> {
        vec![
            ("TARTDRV_FAULT_AT".into(), self.point.clone()),
            ("TARTDRV_FAULT".into(), "kill".into()),
        ]
    }

    /// Whether a stage reached the point (and waits there) within `limit`.
    pub fn reached_within(&self, limit: Duration) -> bool {
        let reached = self.dir.path().join(format!("{}.reached", self.point));
        wait_until(limit, || reached.exists())
    }

    /// Lets the stage waiting at the point go on.
    pub fn release(&self) {
        std::fs::write(self.dir.path().join(format!("{}.go", self.point)), "").unwrap();
    }
}

/// Waits up to `limit` for `child` to exit; kills its group and fails the test otherwise.
#[track_caller]
pub fn finish_within(child: std::process::Child, limit: Duration, what: &str) -> (bool, String) {
    let pid = child.id();
    let waited = std::sync::mpsc::channel();
    let (tx, rx) = waited;
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.unwrap();
            let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), log)
        }
        Err(_) => {
            super::kill_group(pid, libc::SIGKILL);
            panic!("{what} did not finish within {limit:?}");
        }
    }
}
