//! End-to-end jobs against the real `tart` on an Apple Silicon Mac: the same harness as the
//! simulator tests, with the real Tart on PATH and real images. CI has no Mac, so every test
//! here is ignored; `tests/mac/run.sh` runs them (see docs/first-mac.md).
//!
//! Environment: `TARTDRV_MAC_LINUX_IMAGE` and `TARTDRV_MAC_MACOS_IMAGE` (OCI names),
//! optionally `TARTDRV_MAC_OPTIONS` (extra admin options, space-separated, e.g.
//! `--bridged en0`).

use std::time::Duration;

use harness::{run_job, Job, Runner, Verdict};

const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

fn image(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("set {var} (tests/mac/run.sh does)"))
}

fn linux() -> String {
    image("TARTDRV_MAC_LINUX_IMAGE")
}

fn macos() -> String {
    image("TARTDRV_MAC_MACOS_IMAGE")
}

/// A runner for our driver with a private state directory and the given admin options.
fn runner(state: &tempfile::TempDir, options: &[&str]) -> Runner {
    let mut opts: Vec<String> = vec!["--state-dir".into(), state.path().display().to_string()];
    opts.extend(options.iter().map(|s| s.to_string()));
    if let Ok(extra) = std::env::var("TARTDRV_MAC_OPTIONS") {
        opts.extend(extra.split_whitespace().map(String::from));
    }
    let args = |stage: &str| {
        let mut a = vec![stage.to_string()];
        a.extend(opts.iter().cloned());
        a
    };
    Runner::new(DRIVER)
        .config_args(args("config"))
        .prepare_args(args("prepare"))
        .run_args(args("run"))
        .cleanup_args(args("cleanup"))
        .prepare_retry_pause(Duration::from_secs(3))
}

fn state() -> tempfile::TempDir {
    // Short: a control socket path must fit macOS's 104 bytes.
    tempfile::Builder::new()
        .prefix("tdm")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn a_linux_job_runs_end_to_end() {
    let state = state();
    let out = run_job(
        &runner(&state, &[]),
        &Job::new()
            .image(linux())
            .script(["uname -a", "echo linux-ok"])
            .after_script(["echo after-ok"]),
    );
    out.assert_success()
        .assert_log_contains("linux-ok")
        .assert_log_contains("after-ok")
        .assert_log_contains("Where the job's time went:");
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn a_macos_job_sees_the_login_path_of_the_guest_user() {
    let state = state();
    let out = run_job(
        &runner(&state, &[]),
        &Job::new()
            .image(macos())
            .script(["echo \"PATH=$PATH\"", "command -v brew", "sw_vers"]),
    );
    out.assert_success()
        .assert_log_contains("/opt/homebrew/bin");
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn a_macos_job_runs_over_tart_exec() {
    let state = state();
    let out = run_job(
        &runner(&state, &["--transport", "exec"]),
        &Job::new()
            .image(macos())
            .script(["env | sort", "echo exec-ok"]),
    );
    out.assert_success()
        .assert_log_contains("over tart exec")
        .assert_log_contains("exec-ok");
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn a_scripts_exit_status_is_the_build_failure_over_ssh_and_over_exec() {
    for transport in ["ssh", "exec"] {
        let state = state();
        let out = run_job(
            &runner(&state, &["--transport", transport]),
            &Job::new().image(macos()).script(["exit 3"]),
        );
        assert_eq!(
            out.verdict,
            Verdict::BuildFailure { exit_code: 3 },
            "{transport}\n{}",
            out.log
        );
    }
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn three_macos_jobs_share_the_two_macos_slots() {
    let state = state();
    let r = runner(&state, &["--concurrency", "3"]);
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let r = r.clone();
                s.spawn(move || {
                    run_job(
                        &r,
                        &Job::new()
                            .image(macos())
                            .script([format!("echo job-{i}"), "sleep 20".to_string()]),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outs {
        out.assert_success();
    }
    assert!(outs.iter().any(|o| o.log.contains("slot")));
}

#[test]
#[ignore = "needs an Apple Silicon Mac with Tart: run tests/mac/run.sh"]
fn nested_virtualization_reaches_only_linux_guests() {
    let state = state();
    let out = run_job(
        &runner(&state, &["--nested"]),
        &Job::new().image(macos()).script(["echo macos-nested-ok"]),
    );
    out.assert_success().assert_log_contains("macos-nested-ok");
    let out = run_job(
        &runner(&state, &["--nested"]),
        &Job::new()
            .image(linux())
            .script(["ls -l /dev/kvm || echo no-kvm", "echo linux-nested-done"]),
    );
    // Before macOS 15 or on chips before M3, Tart refuses --nested for any guest.
    assert!(
        matches!(
            out.verdict,
            Verdict::Success | Verdict::SystemFailure { .. }
        ),
        "{}",
        out.log
    );
}
