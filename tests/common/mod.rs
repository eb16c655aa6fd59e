//! A test bed for end-to-end jobs: a simulated Mac (Tart simulator with real SSH guests), a
//! private driver state directory, and a gitlab-runner configured for our driver.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use harness::sim::{Image, SimHost};
use harness::Runner;

pub const MACOS: &str = "ghcr.io/cirruslabs/macos-sequoia-base:latest";
pub const MACOS_VANILLA: &str = "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest";
pub const LINUX: &str = "ghcr.io/cirruslabs/ubuntu:latest";

pub const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

/// End-to-end tests need root, sshd and namespaces; the Nix build sandbox has none.
pub fn skip_e2e() -> bool {
    if std::env::var_os("TART_DRIVER_SKIP_E2E").is_some() {
        eprintln!("skipped: TART_DRIVER_SKIP_E2E is set");
        return true;
    }
    false
}

pub struct Bed {
    pub sim: SimHost,
    pub state_dir: PathBuf,
    /// Admin options given to every stage.
    pub options: Vec<String>,
}

impl Bed {
    /// A host with the stock images: macOS base (agent), macOS vanilla, Ubuntu (agent).
    pub fn new() -> Bed {
        let sim = SimHost::new()
            .with_image(MACOS, Image::darwin().agent(true))
            .with_image(MACOS_VANILLA, Image::darwin())
            .with_image(LINUX, Image::linux().agent(true));
        let state_dir = sim.root().join("state");
        Bed {
            sim,
            state_dir,
            options: Vec::new(),
        }
    }

    pub fn image(mut self, name: &str, image: Image) -> Bed {
        self.sim.add_image(name, image);
        self
    }

    /// Adds admin options (flags) to every stage.
    pub fn option<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Bed {
        self.options.extend(args.into_iter().map(Into::into));
        self
    }

    fn stage_args(&self, stage: &str) -> Vec<String> {
        let mut args = vec![
            stage.to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
        ];
        args.extend(self.options.iter().cloned());
        args
    }

    pub fn runner(&self) -> Runner {
        Runner::new(DRIVER)
            .config_args(self.stage_args("config"))
            .prepare_args(self.stage_args("prepare"))
            .run_args(self.stage_args("run"))
            .cleanup_args(self.stage_args("cleanup"))
            .envs(self.sim.env())
            .prepare_retry_pause(Duration::from_millis(200))
            .graceful_kill_timeout(Duration::from_secs(10))
    }

    /// Runs the driver binary directly with this bed's environment.
    pub fn driver(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(DRIVER)
            .args(args)
            .envs(self.sim.env())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run driver")
    }

    /// Asserts that nothing of the job is left on the host: no VM, no process mentioning the
    /// simulated host (ssh masters, supervisors, tart run), no per-job state.
    pub fn assert_nothing_left(&self) {
        let leaks = self.sim.leaks(None, None);
        let vm_state: Vec<_> = std::fs::read_dir(self.state_dir.join("vms"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            leaks.is_empty() && vm_state.is_empty(),
            "left behind: {leaks:?}, state: {vm_state:?}"
        );
    }
}
