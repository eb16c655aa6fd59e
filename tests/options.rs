//! The rest of the options: each one's effect on Tart's command line or in the VM, the
//! gitlab-tart-executor names, the admin's job-override policy, and errors for bad values.

mod common;

use std::path::PathBuf;

use common::{Bed, LINUX, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};

/// Puts a `tart` in front of the simulator that records every invocation (argv, and whether
/// TART_NO_AUTO_PRUNE was set), and points the driver at it. Returns the record's path.
fn record_tart(bed: Bed) -> (Bed, PathBuf) {
    let dir = bed.sim.root().join("recording");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    let wrapper = dir.join("tart");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s' \"${{TART_NO_AUTO_PRUNE+[no-auto-prune] }}\" >> '{log}'\necho \"$*\" >> '{log}'\nexec '{sim}' \"$@\"\n",
            log = log.display(),
            sim = bed.sim.tart_path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bed = bed.option(["-x", wrapper.to_str().unwrap()]);
    (bed, log)
}

fn calls(log: &PathBuf, subcommand: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.trim_start_matches("[no-auto-prune] ")
                .starts_with(&format!("{subcommand} "))
        })
        .map(String::from)
        .collect()
}

fn system_failure(v: &Verdict) -> bool {
    matches!(v, Verdict::SystemFailure { .. })
}

fn build_failure(v: &Verdict) -> bool {
    matches!(v, Verdict::BuildFailure { .. })
}

#[test]
fn softnet_from_the_admin_or_the_job_reaches_tart_run() {
    let (bed, log) = record_tart(Bed::new());
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_SOFTNET_ENABLED", "true")
            .script(["true"]),
    );
    out.assert_success();
    assert!(
        calls(&log, "run")
            .iter()
            .all(|c| c.contains("--net-softnet")),
        "{:?}",
        calls(&log, "run")
    );

    let (bed, log) = record_tart(Bed::new().option(["--softnet-allow", "10.0.0.0/8"]));
    run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    assert!(
        calls(&log, "run")[0].contains("--net-softnet-allow 10.0.0.0/8"),
        "{:?}",
        calls(&log, "run")
    );
}

#[test]
fn gitlab_tart_executor_network_and_disk_options_reach_tart_run() {
    let (bed, log) =
        record_tart(Bed::new().option(["--bridged", "en0", "--root-disk-opts", "sync=none"]));
    run_job(
        &bed.runner(),
        &Job::new()
            .image(LINUX)
            .var("TART_EXECUTOR_NESTED", "true")
            .var("TART_EXECUTOR_VNC_ENABLED", "true")
            .var("TART_EXECUTOR_HEADLESS", "false")
            .script(["true"]),
    );
    let run = calls(&log, "run");
    assert!(!run.is_empty());
    for expected in [
        "--net-bridged en0",
        "--root-disk-opts sync=none",
        "--nested",
        "--vnc",
    ] {
        assert!(run[0].contains(expected), "{expected} missing: {run:?}");
    }
    assert!(
        !run[0].contains("--no-graphics"),
        "headless despite TART_EXECUTOR_HEADLESS=false: {run:?}"
    );
}

#[test]
fn random_mac_is_applied_with_tart_set_and_jobs_need_the_admins_leave() {
    let (bed, log) = record_tart(Bed::new().option(["--random-mac"]));
    run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"])).assert_success();
    let set = calls(&log, "set");
    assert!(set.iter().any(|c| c.contains("--random-mac")), "{set:?}");
    // Each random MAC takes a DHCP lease for a day: jobs may not ask by default.
    let out = run_job(
        &Bed::new().runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_RANDOM_MAC", "true")
            .script(["true"]),
    );
    assert!(build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("does not let jobs change `random_mac`");
}

#[test]
fn pull_options_reach_pull_and_clone() {
    let (bed, log) = record_tart(Bed::new().option([
        "--insecure-pull",
        "--pull-concurrency",
        "2",
        "--no-auto-prune",
    ]));
    run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"])).assert_success();
    for sub in ["pull", "clone"] {
        let c = calls(&log, sub);
        assert!(
            !c.is_empty()
                && c.iter().all(|c| c.contains("--insecure")
                    && c.contains("--concurrency 2")
                    && c.starts_with("[no-auto-prune]")),
            "{sub}: {c:?}"
        );
    }
}

#[test]
fn the_time_zone_applies_to_the_jobs_scripts() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_TIMEZONE", "Asia/Tokyo")
            .script(["echo \"zone: $(date +%Z)\""]),
    );
    out.assert_success().assert_log_contains("zone: JST");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_TIMEZONE", "../../etc/passwd")
            .script(["true"]),
    );
    assert!(build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("is not a time zone name");
}

#[test]
fn gitlab_tart_executor_ssh_variable_names_work() {
    let image = "ghcr.io/acme/custom-user:1";
    let bed = Bed::new().image(image, Image::darwin().credentials("builder", "b-uild3r!pw"));
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(image)
            .var("TART_EXECUTOR_SSH_USERNAME", "builder")
            .masked_var("TART_EXECUTOR_SSH_PASSWORD", "b-uild3r!pw")
            .script(["echo \"user: $(whoami)\""]),
    );
    out.assert_success().assert_log_contains("user: builder");
}

#[test]
fn the_admin_decides_which_settings_jobs_may_change() {
    let bed = Bed::new().option(["--job-override", "shell"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_SSH_PASSWORD", "guess")
            .script(["true"]),
    );
    assert!(build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("does not let jobs change `ssh_credentials`");
    assert!(bed.sim.local_vms().is_empty());
    run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_SHELL", "/usr/bin/bash")
            .script(["true"]),
    )
    .assert_success();
}

#[test]
fn a_job_cannot_move_tarts_home_and_is_told_so() {
    let bed = Bed::new();
    let elsewhere = bed.sim.root().join("elsewhere");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_HOME", elsewhere.to_str().unwrap())
            .script(["true"]),
    );
    out.assert_success()
        .assert_log_contains("TART_HOME, which this driver ignores");
    assert!(!elsewhere.exists(), "Tart worked in the job's TART_HOME");
}

#[test]
fn image_globs_allow_matching_images_only() {
    let bed = Bed::new().option(["--allow-image", "ghcr.io/cirruslabs/macos-*"]);
    run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"])).assert_success();
    let out = run_job(&bed.runner(), &Job::new().image(LINUX).script(["true"]));
    assert!(build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("not in this runner's allowed images");
}

#[test]
fn guest_builds_and_cache_paths_are_configurable() {
    let bed = Bed::new().option([
        "--guest-builds-dir",
        "/Users/admin/jobs",
        "--guest-cache-dir",
        "/Users/admin/cache",
    ]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .script(["echo \"dir: $CI_PROJECT_DIR\"", "pwd"]),
    );
    out.assert_success()
        .assert_log_contains("dir: /Users/admin/jobs/");
    assert_eq!(
        out.config.as_ref().unwrap().cache_dir.as_deref(),
        Some("/Users/admin/cache")
    );
}

#[test]
fn gitlab_runner_is_copied_from_the_host_into_a_guest_of_the_same_os() {
    let bed = Bed::new().option(["--install-gitlab-runner", "--copy-gitlab-runner"]);
    let host_bin = bed.sim.root().join("host-bin");
    std::fs::create_dir_all(&host_bin).unwrap();
    let fake = host_bin.join("gitlab-runner");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Version:      17.6.0 (host copy)'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        host_bin.display(),
        bed.sim
            .env()
            .into_iter()
            .find(|(k, _)| k == "PATH")
            .unwrap()
            .1
    );
    let runner = bed.runner().env("PATH", path);
    let out = run_job(
        &runner,
        &Job::new().image(LINUX).script(["gitlab-runner --version"]),
    );
    out.assert_success()
        .assert_log_contains("copied")
        .assert_log_contains("17.6.0 (host copy)");
}

#[test]
fn bad_admin_values_fail_the_config_stage_naming_the_option() {
    for (args, expected) in [
        (vec!["--softnet-allow", "everything"], "--softnet-allow"),
        (
            vec!["--root-disk-opts", "turbo"],
            "unknown disk option `turbo`",
        ),
        (
            vec!["--guest-builds-dir", "relative/dir"],
            "--guest-builds-dir",
        ),
        (vec!["--timezone", "Mars/Olympus Mons"], "--timezone"),
        (vec!["--bridged", "-x"], "--bridged"),
        (vec!["--pull-concurrency", "0"], "--pull-concurrency"),
        (vec!["--display", "wide"], "--display"),
        (vec!["--volume", "/a:/b:rx"], "unknown flag `rx`"),
        (
            vec!["--allow-image-expr", "(unclosed"],
            "--allow-image-expr",
        ),
    ] {
        let bed = Bed::new().option(args.clone());
        let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
        assert!(system_failure(&out.verdict), "{args:?}: {:?}", out.verdict);
        out.assert_log_contains(expected);
        assert_eq!(out.prepare_attempts, 3, "{args:?}");
    }
}

#[test]
fn bad_job_values_are_the_jobs_failure_naming_the_variable() {
    let bed = Bed::new();
    for (var, value, expected) in [
        ("TART_EXECUTOR_DISPLAY", "huge", "TART_EXECUTOR_DISPLAY"),
        ("TART_EXECUTOR_TIMEOUT", "soon", "TART_EXECUTOR_TIMEOUT"),
        ("TART_EXECUTOR_HEADLESS", "maybe", "is not a boolean"),
        ("TART_SSH_USERNAME", "admin; rm -rf /", "TART_SSH_USERNAME"),
        ("TART_TRANSPORT", "carrier-pigeon", "unknown transport"),
        (
            "TART_EXECUTOR_SHELL",
            "bash\nrm -rf /",
            "control characters",
        ),
    ] {
        let out = run_job(
            &bed.runner(),
            &Job::new().image(MACOS).var(var, value).script(["true"]),
        );
        assert!(build_failure(&out.verdict), "{var}: {:?}", out.verdict);
        out.assert_log_contains(expected);
        assert_eq!(
            out.prepare_attempts, 1,
            "{var}: a job's mistake is not retried"
        );
    }
    assert!(bed.sim.local_vms().is_empty());
}

#[test]
fn ssh_keys_log_in_to_images_that_carry_the_public_key() {
    let bed = Bed::new();
    let key = bed.sim.root().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let bed = bed
        .image(
            "ghcr.io/acme/keyed:1",
            Image::darwin().authorized_key(public.trim()),
        )
        .option(["--ssh-key-file", key.to_str().unwrap()]);
    run_job(
        &bed.runner(),
        &Job::new()
            .image("ghcr.io/acme/keyed:1")
            .script(["echo key-login-ok"]),
    )
    .assert_success()
    .assert_log_contains("key-login-ok");
    // An image without the key refuses at once; the password is not tried instead.
    let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    assert!(system_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("refused SSH login");
}
