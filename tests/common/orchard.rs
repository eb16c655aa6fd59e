//! The Orchard test fleet: the fake controller (tests/orchard-sim) with one Tart worker,
//! the test bed's simulated Mac, and a runner host whose driver uses `--backend orchard`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::Job;
use orchard_sim::{Account, Config, Sim, TartEnv, WorkerSpec, ALL_ROLES};

use super::{Bed, MACOS};

/// The images the fleet's runner declares public (`--public-image`): the stock ones.
pub const PUBLIC: &str = r"ghcr\.io/cirruslabs/.*";

pub const ACCOUNT: &str = "gitlab";
pub const TOKEN: &str = "tok-5be17c0d";

/// The fake controller with one Tart worker (the bed's simulated Mac), and a runner host
/// whose driver uses `--backend orchard`.
pub struct Fleet {
    // Dropped first: the controller deletes its VMs while the worker's Mac still exists.
    pub sim: Sim,
    pub bed: Bed,
    _tokens: tempfile::TempDir,
}

impl Fleet {
    pub fn start(change: impl FnOnce(&mut Config)) -> Fleet {
        Fleet::with_options(change, &[])
    }

    pub fn with_options(change: impl FnOnce(&mut Config), extra: &[&str]) -> Fleet {
        Fleet::on(Bed::new(), change, extra)
    }

    /// The fleet's one worker is `bed`'s simulated Mac; the runner's host is `bed` too.
    pub fn on(bed: Bed, change: impl FnOnce(&mut Config), extra: &[&str]) -> Fleet {
        let mut cfg = Config {
            accounts: vec![Account::new(ACCOUNT, TOKEN, ALL_ROLES)],
            workers: vec![WorkerSpec {
                name: "mini-1".into(),
                tart: Some(TartEnv {
                    tart: bed.sim.tart_path(),
                    env: bed.sim.env(),
                }),
                ..WorkerSpec::default()
            }],
            scheduler_interval_ms: 100,
            ..Config::default()
        };
        change(&mut cfg);
        let sim = Sim::start(cfg).expect("start the fake controller");
        let tokens = tempfile::tempdir().unwrap();
        let token_file: PathBuf = tokens.path().join("orchard-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fingerprint = sim.fingerprint.clone().unwrap();
        let mut options = vec![
            "--backend".to_string(),
            "orchard".into(),
            "--orchard-url".into(),
            sim.url.clone(),
            "--orchard-service-account".into(),
            ACCOUNT.into(),
            "--orchard-token-file".into(),
            token_file.display().to_string(),
            "--orchard-ca-fingerprint".into(),
            fingerprint,
            "--timeout".into(),
            "60".into(),
            // The stock images (tests/common's MACOS, LINUX, ...): every job may run them.
            "--public-image".into(),
            PUBLIC.into(),
        ];
        options.extend(extra.iter().map(|s| s.to_string()));
        Fleet {
            sim,
            bed: bed.option(options),
            _tokens: tokens,
        }
    }

    /// Nothing of the job anywhere: not on the controller, not on the worker's Mac, not on
    /// the runner's host.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.sim.vms().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.sim.vms(), Vec::new(), "VMs left on the controller");
        self.bed.assert_nothing_left_within(Duration::from_secs(15));
    }
}

pub fn job() -> Job {
    Job::new().image(MACOS)
}

impl Fleet {
    /// `gc --backend orchard` on the runner's host; its stderr.
    /// Until the job's ssh master has exited (its control socket is gone): after a cut the
    /// proxy gives ssh a moment to end its side before it ends the connection.
    pub fn wait_master_gone(&self) {
        let record = self.bed.vm_state_dirs().pop().expect("the job's record");
        assert!(
            super::wait_until(Duration::from_secs(20), || !record.join("ssh").exists()),
            "the job's ssh master outlived the cut connection"
        );
    }

    pub fn gc(&self, extra: &[&str]) -> String {
        let out = std::process::Command::new(super::DRIVER)
            .arg("gc")
            .arg("--state-dir")
            .arg(&self.bed.state_dir)
            .args(&self.bed.options)
            .args(extra)
            .envs(self.bed.sim.env())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{text}");
        text
    }
}
