//! The job lifecycle, end to end: gitlab-runner (the harness) calls our driver, which drives
//! the Tart simulator's real SSH guests.

mod common;

use std::time::{Duration, Instant};

use common::{Bed, LINUX, MACOS};
use harness::{run_job, Job, Verdict};

#[test]
fn a_job_of_all_stages_succeeds_and_leaves_nothing_behind() {
    let bed = Bed::new();
    let job = Job::new()
        .image(MACOS)
        .before_script(["echo before"])
        .script(["echo hello from $(whoami)", "test -d \"$CI_PROJECT_DIR\""])
        .after_script(["echo after"])
        .cache(true)
        .artifacts(true);
    let out = run_job(&bed.runner(), &job);
    out.assert_success()
        .assert_log_contains("hello from admin")
        .assert_log_contains("before")
        .assert_log_contains("after")
        // The stock image has no gitlab-runner, and prepare says what that means.
        .assert_log_contains("no gitlab-runner in the VM: artifacts and cache will be skipped");
    bed.assert_nothing_left();
}

#[test]
fn a_failing_script_is_a_build_failure_with_its_exit_code() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .script(["echo going to fail", "exit 3"]),
    );
    out.assert_build_failure(3);
    bed.assert_nothing_left();
}

#[test]
fn bash_only_syntax_works_in_scripts() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script([
            "words='a b c'; n=0; for w in $words; do n=$((n+1)); done; echo \"count=$n\"",
            "arr=(x y z); echo \"second=${arr[1]}\"",
            "[[ abc == a* ]] && echo glob-match",
            "echo no-match-*.txt",
        ]),
    );
    out.assert_success()
        .assert_log_contains("count=3")
        .assert_log_contains("second=y")
        .assert_log_contains("glob-match")
        .assert_log_contains("no-match-*.txt");
}

#[test]
fn stdout_and_stderr_arrive_separately_and_in_order() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .script(["for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done"]),
    );
    out.assert_success();
    let build = out.stage("build_script").expect("build_script ran");
    let stdout = &build.stdout;
    let stderr = &build.stderr;
    assert!(stdout.contains("out1\nout2\nout3"), "stdout: {stdout}");
    assert!(stderr.contains("err1\nerr2\nerr3"), "stderr: {stderr}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("err")),
        "stderr leaked into stdout: {stdout}"
    );
    let log = &out.log;
    let (a, b, c) = (
        log.find("out1").unwrap(),
        log.find("err2").unwrap(),
        log.find("out3").unwrap(),
    );
    assert!(a < b && b < c, "interleaving lost: {log}");
}

#[test]
fn a_linux_guest_runs_the_same_job() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(LINUX)
            .script(["echo linux says $(uname -s)"]),
    );
    out.assert_success().assert_log_contains("linux says Linux");
    bed.assert_nothing_left();
}

#[test]
fn a_dead_tart_run_fails_prepare_within_seconds_with_tarts_message() {
    let bed = Bed::new().image(
        "ghcr.io/acme/broken:latest",
        harness::sim::Image::darwin().run_dies(Some(
            "Failed to start the VM: VZErrorDomain Code=2 invalid configuration",
        )),
    );
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image("ghcr.io/acme/broken:latest")
            .script(["true"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("VZErrorDomain Code=2 invalid configuration");
    // Three prepare attempts, each failing at once.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    bed.assert_nothing_left();
}

#[test]
fn a_wrong_password_fails_prepare_at_once_with_a_clear_message() {
    let bed = Bed::new();
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_SSH_PASSWORD", "not-the-password")
            .script(["true"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("refused SSH login as `admin`");
    assert!(
        !out.log.contains("not-the-password"),
        "password in the job log"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    bed.assert_nothing_left();
}

#[test]
fn cleanup_with_nothing_created_succeeds() {
    let bed = Bed::new();
    let out = run_job(&bed.runner(), &Job::new().script(["true"]));
    // No image and no default: a build failure that names the fix...
    assert!(
        matches!(out.verdict, Verdict::BuildFailure { .. }),
        "{:?}",
        out.verdict
    );
    out.assert_log_contains("no `image:`");
    // ...and cleanup, called with nothing created, exits 0.
    assert!(
        out.cleanups.iter().all(|c| c.result.is_success()),
        "{:?}",
        out.cleanups
    );
    bed.assert_nothing_left();
}

#[test]
fn run_stages_reuse_the_prepare_connection_without_new_ssh_logins() {
    let bed = Bed::new();
    // No cleanup, so the VM and its console log survive the job for inspection; the
    // simulated host removes them when the test ends.
    let runner = bed.runner().cleanup_exec(None);
    let job = Job::new()
        .image(MACOS)
        .before_script(["echo one"])
        .script(["echo two"])
        .after_script(["echo three"])
        .cache(true)
        .artifacts(true);
    let out = run_job(&runner, &job);
    out.assert_success();
    assert!(
        out.run_stage_names().len() >= 7,
        "stages: {:?}",
        out.run_stage_names()
    );
    // The guest's sshd logs every successful login to the VM's console log.
    let vm = bed
        .sim
        .local_vms()
        .into_iter()
        .next()
        .expect("the job's VM")
        .name;
    let console = std::fs::read_to_string(
        bed.sim
            .tart_home()
            .join("vms")
            .join(&vm)
            .join("guest/console.log"),
    )
    .unwrap();
    let logins = console.matches("Accepted password").count();
    assert_eq!(
        logins,
        1,
        "{} run stages made {logins} SSH logins:\n{console}",
        out.run_stage_names().len()
    );
}

#[test]
fn the_exec_transport_runs_the_same_job_through_the_guest_agent() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_TRANSPORT", "exec")
            .script(["echo via agent as $(whoami)", "exit 4"]),
    );
    out.assert_build_failure(4)
        .assert_log_contains("tart exec (guest agent)")
        .assert_log_contains("via agent as admin");
    bed.assert_nothing_left();
}

#[test]
fn auto_transport_falls_back_to_ssh_for_images_without_the_agent() {
    let bed = Bed::new().option(["--transport", "auto"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(common::MACOS_VANILLA)
            .script(["echo fine"]),
    );
    out.assert_success().assert_log_contains("over SSH at 127.");
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script(["echo fine"]),
    );
    out.assert_success()
        .assert_log_contains("tart exec (guest agent)");
    bed.assert_nothing_left();
}

#[test]
fn the_exec_transport_on_an_image_without_the_agent_says_so() {
    let bed = Bed::new().option(["--timeout", "8"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(common::MACOS_VANILLA)
            .var("TART_TRANSPORT", "exec")
            .script(["true"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}",
        out.verdict
    );
    out.assert_log_contains("guest agent did not answer");
    bed.assert_nothing_left();
}

#[test]
fn large_output_arrives_complete_to_the_last_byte() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script([
            "head -c 30000000 /dev/zero | tr \"\\\\0\" x",
            "echo; echo END-OF-OUTPUT",
            "head -c 30000000 /dev/zero | tr \"\\\\0\" x",
            "echo; echo END-AGAIN",
        ]),
    );
    out.assert_success();
    let build = out.stage("build_script").expect("build_script ran");
    let body = build.stdout.as_bytes();
    assert!(body.len() > 60_000_000, "got {} bytes", body.len());
    assert!(
        build.stdout.trim_end().ends_with("\nEND-AGAIN"),
        "the end of the output is missing: ...{}",
        &build.stdout[build.stdout.len().saturating_sub(200)..]
    );
    assert_eq!(
        build
            .stdout
            .lines()
            .filter(|l| *l == "END-OF-OUTPUT")
            .count(),
        1
    );
}
