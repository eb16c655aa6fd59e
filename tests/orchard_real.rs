//! The Orchard backend against a REAL controller and its Macs: opt-in, for developers and
//! admins who have one (CI has no Orchard: it cannot build or download it). Built only with
//! `--features orchard-real`, and then every test needs:
//!
//! - `ORCHARD_TEST_URL`: the controller, e.g. `https://orchard.example.com:6120`
//! - `ORCHARD_TEST_SERVICE_ACCOUNT`: an account with `compute:read` and `compute:write`
//! - `ORCHARD_TEST_TOKEN_FILE`: a file holding its token
//! - optional: `ORCHARD_TEST_CA_FINGERPRINT` or `ORCHARD_TEST_CA_FILE` (a self-signed
//!   controller), `ORCHARD_TEST_IMAGE` (default `ghcr.io/cirruslabs/macos-sequoia-base:latest`,
//!   whose login is admin/admin), `ORCHARD_TEST_LABELS` (`k=v,k=v`, to pick test workers)
//!
//! `cargo test --features orchard-real --test orchard_real -- --test-threads 1`
//!
//! The jobs run through the harness exactly as gitlab-runner runs them, with a state
//! directory of their own; afterwards no VM of theirs may be left on the controller.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{run_job, Job, Runner};

const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

struct Controller {
    url: String,
    account: String,
    token_file: PathBuf,
    trust: Vec<String>,
    image: String,
    labels: Vec<String>,
    state: tempfile::TempDir,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &str) -> String {
    var(name).unwrap_or_else(|| {
        panic!("{name} is not set: this suite runs against a real Orchard controller (see the top of tests/orchard_real.rs)")
    })
}

impl Controller {
    fn from_env() -> Controller {
        let trust = match (
            var("ORCHARD_TEST_CA_FINGERPRINT"),
            var("ORCHARD_TEST_CA_FILE"),
        ) {
            (Some(fp), _) => vec!["--orchard-ca-fingerprint".into(), fp],
            (None, Some(file)) => vec!["--orchard-ca-file".into(), file],
            (None, None) => Vec::new(),
        };
        Controller {
            url: required("ORCHARD_TEST_URL"),
            account: required("ORCHARD_TEST_SERVICE_ACCOUNT"),
            token_file: required("ORCHARD_TEST_TOKEN_FILE").into(),
            trust,
            image: var("ORCHARD_TEST_IMAGE")
                .unwrap_or_else(|| "ghcr.io/cirruslabs/macos-sequoia-base:latest".into()),
            labels: var("ORCHARD_TEST_LABELS")
                .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// The admin options every stage gets.
    fn options(&self) -> Vec<String> {
        let mut args = vec![
            "--state-dir".to_string(),
            self.state.path().display().to_string(),
            "--backend".into(),
            "orchard".into(),
            "--orchard-url".into(),
            self.url.clone(),
            "--orchard-service-account".into(),
            self.account.clone(),
            "--orchard-token-file".into(),
            self.token_file.display().to_string(),
            "--orchard-name-prefix".into(),
            "drvtest".into(),
            // On Orchard a job may run only images the admin declared public.
            "--public-image".into(),
            format!("^{}$", regex::escape(&self.image)),
            "--public-image".into(),
            r"^ghcr\.io/cirruslabs/tartdrv-no-such-image:latest$".into(),
        ];
        args.extend(self.trust.iter().cloned());
        for label in &self.labels {
            args.extend(["--orchard-label".to_string(), label.clone()]);
        }
        args
    }

    fn runner(&self) -> Runner {
        let stage = |name: &str| {
            let mut args = vec![name.to_string()];
            args.extend(self.options());
            args
        };
        Runner::new(DRIVER)
            .config_args(stage("config"))
            .prepare_args(stage("prepare"))
            .run_args(stage("run"))
            .cleanup_args(stage("cleanup"))
    }

    /// This test's VMs still on the controller: with a maximum age of one second, `gc
    /// --dry-run` names every VM of this runner (its id lives in the test's state directory).
    fn leftovers(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_secs(2));
        let gc = Command::new(DRIVER)
            .args(["gc", "--dry-run", "--orchard-max-vm-age", "1"])
            .args(self.options())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&gc.stderr);
        assert!(gc.status.success(), "{text}");
        text.lines()
            .filter(|l| l.starts_with("would remove"))
            .map(String::from)
            .collect()
    }
}

#[test]
fn doctor_passes_against_the_real_controller() {
    let c = Controller::from_env();
    let out = Command::new(DRIVER)
        .arg("doctor")
        .args(c.options())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
}

#[test]
fn a_job_runs_on_the_real_fleet_and_its_vm_is_deleted() {
    let c = Controller::from_env();
    let job = Job::new()
        .image(c.image.clone())
        .timeout(Duration::from_secs(3600))
        .script(["echo on-$(hostname)", "sw_vers || uname -a"]);
    let out = run_job(&c.runner(), &job);
    out.assert_success()
        .assert_log_contains("Orchard: placed on worker");
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn a_failing_script_is_a_build_failure_on_the_real_fleet() {
    let c = Controller::from_env();
    let job = Job::new().image(c.image.clone()).script(["exit 7"]);
    run_job(&c.runner(), &job).assert_build_failure(7);
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn an_image_no_worker_can_pull_is_a_system_failure_with_orchards_reason() {
    let c = Controller::from_env();
    let job = Job::new()
        .image("ghcr.io/cirruslabs/tartdrv-no-such-image:latest")
        .script(["true"]);
    let out = run_job(&c.runner(), &job);
    out.assert_system_failure()
        .assert_log_contains("Orchard failed the VM");
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
