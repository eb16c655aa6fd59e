//! Hostile input end to end: job variables that try to reach past the job (Tart options in
//! `image:`, shell metacharacters and newlines in TART_* values, TART_HOME, another job's
//! identity) are refused with a clear error or have no effect, and leave nothing; scripts of
//! any bytes and very long lines arrive intact.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Bed, MACOS};
use harness::{run_job, Job, Verdict};

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn tart_options_smuggled_through_image_are_refused_before_any_tart_command() {
    let bed = Bed::new();
    for image in [
        "--dir=/:/x",
        "-x",
        "--net-bridged=en0",
        "ghcr.io/a/b:latest --dir=/:/x",
        "ghcr.io/a/b:latest\n--dir=/:/x",
        "ghcr.io/a/b:$(id)",
        "ghcr.io/../../etc:1",
    ] {
        let out = run_job(&bed.runner(), &Job::new().image(image).script(["true"]));
        assert_eq!(
            out.verdict,
            Verdict::BuildFailure { exit_code: 1 },
            "{image:?}: {}",
            out.log
        );
        out.assert_log_contains("is not a valid image reference");
        assert!(bed.sim.local_vms().is_empty(), "{image:?} made a VM");
    }
    bed.assert_nothing_left();
}

#[test]
fn newlines_and_shell_metacharacters_in_tart_variables_are_refused_by_name() {
    let bed = Bed::new();
    let canary = bed.sim.root().join("pwned");
    let touch = format!("touch {}", canary.display());
    for (var, value) in [
        ("TART_EXECUTOR_SHELL", format!("bash; {touch}")),
        ("TART_EXECUTOR_SHELL", format!("bash\n{touch}")),
        ("TART_SSH_USERNAME", format!("admin$({touch})")),
        ("TART_SSH_USERNAME", "-oProxyCommand=sh".to_string()),
        ("TART_EXECUTOR_DISPLAY", format!("1024x768;{touch}")),
        ("TART_PULL_POLICY", "always\n--insecure".to_string()),
        ("TART_EXECUTOR_TIMEOUT", format!("5`{touch}`")),
        ("TART_TRANSPORT", "ssh -oProxyCommand=x".to_string()),
    ] {
        let out = run_job(
            &bed.runner(),
            &Job::new()
                .image(MACOS)
                .var(var, &value)
                .script(["echo ran"]),
        );
        assert_eq!(
            out.verdict,
            Verdict::BuildFailure { exit_code: 1 },
            "{var}={value:?}: {}",
            out.log
        );
        out.assert_log_contains(var);
        assert!(
            !canary.exists(),
            "{var}={value:?} ran a command on the host"
        );
        bed.assert_nothing_left();
    }
}

/// TART_HOME of gitlab-tart-executor's jobs moves Tart's home; here Tart's home is the
/// admin's. The job is told its variable is ignored and why, and Tart works where the admin
/// said: the image lands in the admin's home, nothing in the job's.
#[test]
fn a_jobs_tart_home_is_ignored_with_a_warning() {
    let bed = Bed::new();
    let elsewhere = bed.sim.root().join("job-chosen-home");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_HOME", elsewhere.to_str().unwrap())
            .script(["echo ran-in-the-right-home"]),
    );
    out.assert_success()
        .assert_log_contains("ran-in-the-right-home")
        .assert_log_contains("the job sets TART_HOME, which this driver ignores");
    assert!(!elsewhere.exists(), "Tart worked in the job's TART_HOME");
    assert!(bed
        .sim
        .list()
        .iter()
        .any(|v| v.name.starts_with("ghcr.io/")));
    bed.assert_nothing_left();
}

/// A job that sets CI_RUNNER_SHORT_TOKEN (which gitlab-runner sets itself, and a job's
/// variable overrides) to a live job's, with the same job id as that job has on another
/// GitLab instance, would name the same VM: it is refused before any Tart command, and the
/// other job's VM survives its prepare attempts and cleanups.
#[test]
fn claiming_another_jobs_identity_does_not_reach_its_vm() {
    // A 2-core test box gives each VM 1 CPU, below macOS's minimum of 2.
    let bed = Bed::new().option(["--concurrency", "2", "--cpu", "2"]);
    let victim = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&victim, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let mut attacker = Job::new()
        .image(MACOS)
        .var("CI_RUNNER_SHORT_TOKEN", &victim.token)
        .script(["echo attacker-ran"]);
    attacker.id = victim.id;
    let out = run_job(&bed.runner(), &attacker);
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("the job sets CI_RUNNER_SHORT_TOKEN");
    assert!(!out.log.contains("attacker-ran"), "{}", out.log);
    assert!(
        bed.sim
            .local_vms()
            .iter()
            .any(|v| v.name == victim.vm_name()),
        "the victim's VM is gone"
    );
    let (code, log) = bed.run_script(&victim, "build_script", b"echo victim-still-runs\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("victim-still-runs"));
    let (code, _) = bed.stage(&victim, &["cleanup"]);
    assert_eq!(code, 0);
    bed.assert_nothing_left();
}

/// Every byte value but NUL (which no shell script can hold) travels in the script, and
/// every byte value including NUL comes back on stdout, both ways compared by hash.
#[test]
fn scripts_and_output_of_every_byte_value_arrive_intact() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");

    // In: bytes 1..=255 except the quote, inside a single-quoted string, 64 times over.
    let payload: Vec<u8> = (1u8..=255)
        .filter(|&b| b != b'\'')
        .collect::<Vec<_>>()
        .repeat(64);
    let mut script = b"export LC_ALL=C\nx='".to_vec();
    script.extend_from_slice(&payload);
    script.extend_from_slice(b"'\nprintf %s \"$x\" | sha256sum >&2\n");
    // Out: all 256 values, 4096 times (1 MiB), on stdout.
    script.extend_from_slice(
        b"i=0; one=''; while [ $i -lt 256 ]; do one=\"$one\\\\$(printf %03o $i)\"; i=$((i+1)); done\n\
          n=0; while [ $n -lt 4096 ]; do printf \"$one\"; n=$((n+1)); done\n",
    );
    let path = job.dir.path().join("bytes");
    std::fs::write(&path, &script).unwrap();
    let out = bed
        .stage_command(&job, &["run", path.to_str().unwrap(), "build_script"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&sha256(&payload)),
        "input bytes changed: {stderr}"
    );
    let all: Vec<u8> = (0..=255u8).collect::<Vec<_>>().repeat(4096);
    assert_eq!(out.stdout.len(), all.len());
    assert_eq!(sha256(&out.stdout), sha256(&all), "output bytes changed");
    let (code, _) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0);
    bed.assert_nothing_left();
}

#[test]
fn a_one_megabyte_line_arrives_intact_both_ways() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let line: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let script = format!("x={line}\nprintf %s \"$x\" | sha256sum >&2\necho \"$x\"\n");
    let path = job.dir.path().join("long-line");
    std::fs::write(&path, &script).unwrap();
    let out = bed
        .stage_command(&job, &["run", path.to_str().unwrap(), "build_script"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&sha256(line.as_bytes())));
    assert_eq!(out.stdout, format!("{line}\n").into_bytes());
    let (code, _) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0);
    bed.assert_nothing_left();
}

// --- Debug output -----------------------------------------------------------------------------

/// Debug lines describe the host (every Tart command, the sweep's decisions): a job may not
/// turn them on unless the admin lists `debug` in job_overrides. It is told why.
#[test]
fn a_jobs_debug_switch_is_ignored_unless_the_admin_allows_it() {
    let bed = Bed::new();
    let job = Job::new()
        .image(MACOS)
        .var("TART_DRIVER_DEBUG", "true")
        .script(["echo ran"]);
    let out = run_job(&bed.runner(), &job);
    out.assert_success()
        .assert_log_contains("does not let jobs turn on debug output");
    assert!(!out.log.contains("running `"), "{}", out.log);

    let bed = bed.option(["--job-override", "debug"]);
    let out = run_job(&bed.runner(), &job);
    out.assert_success().assert_log_contains("running `");
    bed.assert_nothing_left();
}

/// With debug lines on, a job's log shows its own VM, never another job's: not a live
/// neighbour's, not the orphan its prepare sweeps (their names carry other runners' tokens
/// and job ids).
#[test]
fn debug_lines_never_name_other_jobs() {
    let bed = Bed::new().option(["--concurrency", "2", "--cpu", "2"]);
    let neighbour = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&neighbour, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let orphan = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&orphan, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    for pid in common::pids_with_args(&["supervise", &orphan.vm_name()]) {
        // SAFETY: kill(2) of the supervisor this test's job started.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || common::pids_with_args(&["run", &orphan.vm_name()]).is_empty()
    ));
    // The admin's debug switch: every Tart command and sweep decision in the job log.
    let out = run_job(
        &bed.runner().env("TART_DRIVER_LOG", "debug"),
        &Job::new().image(common::LINUX).script(["echo ran"]),
    );
    out.assert_success()
        .assert_log_contains("running `")
        .assert_log_contains("Removed 1 orphaned VM(s)");
    for other in [&neighbour, &orphan] {
        assert!(!out.log.contains(&other.vm_name()), "{}", out.log);
        assert!(!out.log.contains(&other.id.to_string()), "{}", out.log);
    }
    let (code, log) = bed.stage(&neighbour, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}
