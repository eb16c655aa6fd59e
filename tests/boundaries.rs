//! Trust boundaries between jobs sharing a host: a job's image cannot take more of the host
//! than each VM's share, a job without credentials cannot use another project's private
//! image or the runner user's registry logins, a job's guest cannot reach a neighbouring
//! job's VM, and a cancel ends a stage's remote processes whatever the script did with its
//! output. Every wait has a bound.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{kill_group, skip_e2e, Bed, LINUX, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};

const GREEDY: &str = "ghcr.io/hostile/greedy:latest";

#[test]
fn an_image_whose_minimum_exceeds_the_per_vm_share_fails_the_job_instead_of_taking_the_host() {
    if skip_e2e() {
        return;
    }
    // 4096 CPUs and 4 TiB: more than any host's share per VM.
    let bed = Bed::new().image(GREEDY, Image::linux().minimum(4096, 4 << 20));
    let out = run_job(&bed.runner(), &Job::new().image(GREEDY).script(["true"]));
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("needs at least 4096 CPUs");
    out.assert_log_contains("use a smaller image");
    bed.assert_nothing_left();
}

// --- Cancel and bounds --------------------------------------------------------------------

/// `exec >log 2>&1` closes the stage's output long before the script ends: the cancel must
/// still stop the script in the guest, and the stage must end within seconds, not at the
/// runner's SIGKILL.
#[test]
fn a_cancel_after_the_script_closed_its_output_stops_the_remote_script_within_seconds() {
    if skip_e2e() {
        return;
    }
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .script([
                "echo started; exec >/tmp/quiet.log 2>&1; sleep 300 & echo $! > /tmp/victim.pid; wait",
            ])
            .after_script([
                "if kill -0 $(cat /tmp/victim.pid) 2>/dev/null; then echo VICTIM-ALIVE; else echo VICTIM-GONE; fi",
            ])
            .cancel_after("build_script", Duration::from_secs(2)),
    );
    out.assert_verdict(Verdict::Canceled);
    out.assert_log_contains("started")
        .assert_log_contains("VICTIM-GONE");
    let build = out.stage("build_script").expect("build ran");
    assert!(
        !build.sigkilled,
        "the stage ignored the cancel until SIGKILL"
    );
    assert!(
        build.duration < Duration::from_secs(7),
        "build_script took {:?}",
        build.duration
    );
    bed.assert_nothing_left();
}

/// An admin's `--timeout` of u64::MAX means "wait as long as it takes", not an overflowing
/// deadline that panics the driver.
#[test]
fn a_huge_admin_timeout_is_no_limit_not_a_panic() {
    if skip_e2e() {
        return;
    }
    let bed = Bed::new().option(["--timeout", &u64::MAX.to_string()]);
    let out = run_job(&bed.runner(), &Job::new().image(LINUX).script(["echo ran"]));
    out.assert_success().assert_log_contains("ran");
    assert!(!out.log.contains("panicked"), "{}", out.log);
    bed.assert_nothing_left();
}

/// A Tart that answers `tart ip` at once with "no IP address found" (instead of waiting the
/// `--wait` seconds) must not make prepare spin: attempts are paced.
#[test]
fn an_immediate_no_ip_answer_is_retried_with_a_pause_not_in_a_busy_loop() {
    if skip_e2e() {
        return;
    }
    let bed = Bed::new().option(["--timeout", "5"]);
    let calls = bed.sim.root().join("ip-calls");
    let wrapper = bed.sim.root().join("impatient-tart");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = ip ]; then echo call >> '{}'; echo 'no IP address found' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
            calls.display(),
            bed.sim.tart_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bed = bed.option(["--tart-executable", wrapper.to_str().unwrap()]);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 2, "{log}");
    let n = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .count();
    // 5 s of boot timeout: a paced loop asks a handful of times, a busy one thousands.
    assert!(
        (1..=15).contains(&n),
        "`tart ip` was called {n} times in 5 s"
    );
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

/// After gitlab-runner SIGKILLs a run stage, nothing of ours may keep the stage's output
/// open: the runner reads it to the end, so a `tart exec` holding it would stall the job
/// for as long as the script runs.
#[test]
fn a_sigkilled_exec_stage_releases_the_runners_output_at_once() {
    if skip_e2e() {
        return;
    }
    let bed = Bed::new().option(["--transport", "exec"]);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let script = job.dir.path().join("script-build");
    std::fs::write(&script, "echo started; sleep 30; echo finished\n").unwrap();
    let mut stage = bed
        .stage_command(&job, &["run", script.to_str().unwrap(), "build_script"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run stage");
    let mut out = BufReader::new(stage.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "started");
    kill_group(stage.id(), libc::SIGKILL);
    let killed = Instant::now();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let _ = stage.wait();
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "the output stayed open {:?} after the SIGKILL",
        killed.elapsed()
    );
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The wall clock jumps (NTP after a dead RTC, an admin): a live job's VM must not look
/// like one gitlab-runner forgot, so `gc` with the clock two years ahead leaves it alone.
#[test]
fn a_wall_clock_jump_does_not_make_gc_sweep_a_live_jobs_vm() {
    if skip_e2e() {
        return;
    }
    let faketime = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is missing: run tests/bed/prepare-host.sh");
    let bed = Bed::new();
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let gc = std::process::Command::new(common::DRIVER)
        .args(["gc", "--state-dir"])
        .arg(&bed.state_dir)
        .envs(bed.sim.env())
        .env("LD_PRELOAD", &faketime)
        .env("FAKETIME", "+800d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("gc");
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(
        bed.sim
            .local_vms()
            .iter()
            .any(|v| v.name == job.vm_name() && v.state == "running"),
        "gc removed a live job's VM: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let (code, log) = bed.run_script(&job, "build_script", b"echo still-here\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("still-here"), "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}
