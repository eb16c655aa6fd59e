//! The fault matrix: each fault the host, Tart, the guest or the runner can throw at a job,
//! driven end to end (harness or direct stage calls, Tart simulator with real SSH guests).
//! Every test states the verdict, the message the job log must carry, a generous bound on
//! how long the job may take, and that nothing is left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{kill_group, pids_with_args, wait_until, Bed, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, JobOutcome, Verdict};

const FAULTY: &str = "ghcr.io/acme/faulty:latest";

fn bed_with(image: Image) -> Bed {
    Bed::new().image(FAULTY, image)
}

#[track_caller]
fn assert_system_failure(out: &JobOutcome, message: &str) {
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "verdict {:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains(message);
}

#[track_caller]
fn assert_within(started: Instant, limit: Duration) {
    assert!(
        started.elapsed() < limit,
        "took {:?}, limit {limit:?}",
        started.elapsed()
    );
}

// --- Boot ----------------------------------------------------------------------------------

#[test]
fn a_slow_boot_succeeds_within_the_boot_timeout() {
    let bed = bed_with(Image::darwin().boot_delay_ms(4000));
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(FAULTY).script(["echo booted-late"]),
    );
    out.assert_success()
        .assert_log_contains("booted-late")
        .assert_log_contains("VM booted and reachable");
    assert_eq!(out.prepare_attempts, 1);
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

#[test]
fn a_vm_that_never_gets_an_ip_fails_prepare_at_the_boot_timeout() {
    let bed = bed_with(Image::darwin().never_ip()).option(["--timeout", "4"]);
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "no IP address within the boot timeout");
    // Three attempts of about four seconds each, not ten minutes.
    assert_eq!(out.prepare_attempts, 3);
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

#[test]
fn tart_run_dying_at_once_fails_every_attempt_at_once() {
    let bed = bed_with(Image::darwin().run_dies(None));
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "the VM stopped while booting");
    out.assert_log_contains("tart run exited with status 1");
    for prepare in out.stages.iter().filter(|s| s.name == "prepare") {
        assert!(
            prepare.duration < Duration::from_secs(10),
            "prepare took {:?}",
            prepare.duration
        );
    }
    assert_within(started, Duration::from_secs(40));
    bed.assert_nothing_left();
}

/// Found by the soak: once `tart run` had died, a concurrent job's sweep took the VM for an
/// orphan and deleted it with its state, and the prepare still watching it waited out the
/// whole boot timeout. A `gc` loop stands in for the other job.
#[test]
fn a_concurrent_sweep_does_not_hide_tart_runs_death_from_prepare() {
    let bed = bed_with(Image::darwin().run_dies(None)).option(["--timeout", "60"]);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let _ = bed.driver(&["gc", "--state-dir", bed.state_dir.to_str().unwrap()]);
            }
        });
        let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
        done.store(true, Ordering::Relaxed);
        out
    });
    assert_system_failure(&out, "the VM stopped while booting");
    for prepare in out.stages.iter().filter(|s| s.name == "prepare") {
        assert!(
            prepare.duration < Duration::from_secs(15),
            "a prepare took {:?}:\n{}",
            prepare.duration,
            out.log
        );
    }
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- The guest dies ------------------------------------------------------------------------

#[test]
fn a_guest_dying_during_prepare_is_a_system_failure_naming_tart() {
    // Powers off before sshd is up (boot takes 1.5 s).
    let bed = bed_with(Image::darwin().boot_delay_ms(1500).guest_dies_after_ms(200));
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "guest has stopped the virtual machine");
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

#[test]
fn a_guest_dying_during_a_run_stage_is_a_system_failure_not_the_users() {
    let bed = bed_with(Image::darwin().guest_dies_after_ms(6000));
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(FAULTY)
            .script(["echo working", "sleep 120"]),
    );
    assert_system_failure(&out, "The VM is gone");
    out.assert_log_contains("working");
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

// --- Credentials and SSH -------------------------------------------------------------------

#[test]
fn ssh_refusing_every_login_fails_prepare_at_once() {
    let bed = bed_with(Image::darwin().reject_logins());
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "refused SSH login as `admin`");
    assert_within(started, Duration::from_secs(40));
    bed.assert_nothing_left();
}

// --- Images and disk -----------------------------------------------------------------------

#[test]
fn a_clone_failing_for_disk_space_says_so_and_how_to_free_space() {
    let bed = bed_with(Image::darwin().clone_fails_disk());
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "No space left on device");
    out.assert_log_contains("gitlab-runner-tart-driver gc");
    assert_within(started, Duration::from_secs(40));
    bed.assert_nothing_left();
}

#[test]
fn a_failing_pull_is_a_system_failure_with_tarts_network_error() {
    let bed = bed_with(Image::darwin().pull_fails());
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(FAULTY).script(["true"]));
    assert_system_failure(&out, "NSURLErrorDomain");
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

#[test]
fn a_registry_refusing_credentials_fails_without_showing_them() {
    let password = "reg-pw-5c1f9e";
    let bed = bed_with(
        Image::darwin()
            .registry_auth("robot", password)
            .pull_refuses_credentials(),
    );
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(FAULTY)
            .var("TART_REGISTRY_USERNAME", "robot")
            .var("TART_REGISTRY_PASSWORD", password)
            .script(["true"]),
    );
    assert_system_failure(&out, "AuthFailed");
    out.assert_log_contains("registry credentials");
    assert!(!out.log.contains(password), "password in the job log");
    assert!(
        !out.runner_log.contains(password),
        "password in the runner log"
    );
    assert_within(started, Duration::from_secs(40));
    bed.assert_nothing_left();
}

// --- The tart binary -----------------------------------------------------------------------

#[test]
fn a_missing_tart_binary_is_named_in_the_error() {
    let bed = Bed::new().option(["-x", "/nonexistent/tart"]);
    let started = Instant::now();
    let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    assert_system_failure(&out, "tart executable `/nonexistent/tart` not found");
    assert_within(started, Duration::from_secs(30));
    bed.assert_nothing_left();
}

#[test]
fn a_tart_binary_that_is_not_executable_is_named_in_the_error() {
    let probe = Bed::new();
    let fake = probe.sim.root().join("not-executable-tart");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bed = Bed::new().option(["-x", fake.to_str().unwrap()]);
    let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    assert_system_failure(&out, "is not executable");
    bed.assert_nothing_left();
}

// --- Retries and cleanup ---------------------------------------------------------------------

/// `tart clone` fails twice (a wrapper in front of the simulator counts calls), so the runner
/// retries prepare; the third attempt succeeds and the job runs.
#[test]
fn prepare_failing_twice_then_succeeding_runs_the_job_on_the_third_attempt() {
    let probe = Bed::new();
    let wrapper = probe.sim.root().join("flaky-tart");
    let counter = probe.sim.root().join("clone-count");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\nif [ \"$1\" = clone ]; then n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; \
             if [ $n -lt 2 ]; then echo 'Error: transient clone failure' >&2; exit 1; fi; fi\nexec {tart} \"$@\"\n",
            c = counter.display(),
            tart = probe.sim.tart_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The wrapper runs against this bed's TART_HOME (it inherits the stage's environment).
    let bed = Bed::new().option(["-x", wrapper.to_str().unwrap()]);
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script(["echo third-time"]),
    );
    out.assert_success().assert_log_contains("third-time");
    out.assert_log_contains("transient clone failure");
    assert_eq!(out.prepare_attempts, 3);
    // Cleanup after each failed attempt and after the job.
    assert_eq!(out.cleanups.len(), 3, "{:?}", out.call_sequence());
    assert!(out.cleanups.iter().all(|c| c.result.is_success()));
    assert_within(started, Duration::from_secs(60));
    bed.assert_nothing_left();
}

#[test]
fn cleanup_twice_and_cleanup_without_prepare_both_succeed() {
    let bed = Bed::new();
    let never_prepared = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&never_prepared, &["cleanup"]);
    assert_eq!(code, 0, "{log}");

    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = bed.run_script(&job, "build_script", b"echo hi\n");
    assert_eq!(code, 0, "{log}");
    for _ in 0..2 {
        let (code, log) = bed.stage(&job, &["cleanup"]);
        assert_eq!(code, 0, "{log}");
    }
    bed.assert_nothing_left();
}

/// gitlab-runner may start cleanup while an aborted run stage is still alive (§6.3).
#[test]
fn cleanup_while_a_run_stage_is_alive_removes_everything_and_the_stage_ends() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let script = job.dir.path().join("long");
    std::fs::write(&script, "sleep 300\n").unwrap();
    let mut run = bed
        .stage_command(&job, &["run", script.to_str().unwrap(), "build_script"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    assert_within(started, Duration::from_secs(30));
    let status = wait_child(&mut run, Duration::from_secs(20)).expect("run stage hangs");
    assert_ne!(status, Some(0));
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- kill -9 -------------------------------------------------------------------------------

fn wait_child(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// `tart pull` is running.
    DuringPull,
    /// `tart clone` has written the VM but not returned yet (see [`slow_clone_bed`]).
    DuringClone,
    /// The supervisor has started `tart run`; no IP yet.
    DuringBootWait,
    /// The ssh master is up; guest setup may be under way.
    AfterMasterStart,
}

/// Starts prepare for `job` and SIGKILLs its process group (as gitlab-runner does after
/// `graceful_kill_timeout`) at `point`.
fn kill_prepare_at(bed: &Bed, job: &common::DirectJob, point: KillPoint) {
    let mut prepare = bed
        .stage_command(job, &["prepare"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = prepare.id();
    let vm = job.vm_name();
    let state = bed.state_dir.join("vms").join(&vm);
    let reached = wait_until(Duration::from_secs(30), || match point {
        KillPoint::DuringPull => !pids_with_args(&["pull", FAULTY]).is_empty(),
        KillPoint::DuringClone => {
            !pids_with_args(&["clone", &vm]).is_empty()
                && bed.sim.local_vms().iter().any(|v| v.name == vm)
        }
        KillPoint::DuringBootWait => !pids_with_args(&["run", &vm]).is_empty(),
        KillPoint::AfterMasterStart => state.join("ssh").exists(),
    });
    assert!(reached, "prepare never reached {point:?}");
    kill_group(pid, libc::SIGKILL);
    let _ = prepare.wait();
}

fn slow_bed() -> Bed {
    // A slow pull and clone and a slow boot leave time to hit each point.
    Bed::new().image(FAULTY, Image::darwin().pull_ms(1500).boot_delay_ms(1500))
}

/// A bed whose `tart clone` lingers 5 s after the clone is on disk, through a wrapper in
/// front of the simulator.
fn slow_clone_bed() -> Bed {
    let bed = Bed::new().image(FAULTY, Image::darwin());
    let wrapper = bed.sim.root().join("slow-clone-tart");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n{tart} \"$@\"; rc=$?\nif [ \"$1\" = clone ]; then sleep 5; fi\nexit $rc\n",
            tart = bed.sim.tart_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    bed.option(["-x", wrapper.to_str().unwrap()])
}

#[test]
fn kill_9_of_prepare_during_pull_is_swept_by_the_next_jobs_prepare() {
    let bed = slow_bed();
    let victim = bed.direct_job(FAULTY);
    kill_prepare_at(&bed, &victim, KillPoint::DuringPull);
    // No cleanup: the runner died too. The next job's prepare sweeps the leftovers.
    let next = bed.direct_job(FAULTY);
    let (code, log) = bed.stage(&next, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = bed.stage(&next, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn kill_9_of_prepare_during_clone_is_swept_by_the_next_jobs_prepare() {
    let bed = slow_clone_bed();
    let victim = bed.direct_job(FAULTY);
    kill_prepare_at(&bed, &victim, KillPoint::DuringClone);
    // No cleanup: the runner died too. The next job's prepare sweeps the leftovers.
    let next = bed.direct_job(FAULTY);
    let (code, log) = bed.stage(&next, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("Removed 1 orphaned VM(s)"),
        "the sweep did not report the victim: {log}"
    );
    assert!(
        bed.sim
            .local_vms()
            .iter()
            .all(|v| v.name != victim.vm_name()),
        "the victim's VM survived the sweep"
    );
    let (code, log) = bed.stage(&next, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn kill_9_of_prepare_during_the_boot_wait_is_removed_by_cleanup() {
    let bed = slow_bed();
    let job = bed.direct_job(FAULTY);
    kill_prepare_at(&bed, &job, KillPoint::DuringBootWait);
    // gitlab-runner runs cleanup after a killed prepare.
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn kill_9_of_prepare_after_the_master_started_is_removed_by_cleanup() {
    let bed = slow_bed();
    let job = bed.direct_job(FAULTY);
    kill_prepare_at(&bed, &job, KillPoint::AfterMasterStart);
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The runner's host lost the runner too (no cleanup ever comes): the VM's supervisor
/// is still alive, so the VM looks owned. A `gc` must still recover it once its supervisor
/// is gone, and must not touch it before.
#[test]
fn kill_9_of_prepare_and_its_supervisor_is_swept_by_gc() {
    let bed = slow_bed();
    let job = bed.direct_job(FAULTY);
    kill_prepare_at(&bed, &job, KillPoint::AfterMasterStart);
    let state = bed.state_dir.join("vms").join(job.vm_name());
    for pid in pids_with_args(&["supervise", &job.vm_name()]) {
        // SAFETY: kill(2) on the supervisor this test's job started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    for pid in pids_with_args(&["run", &job.vm_name()]) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(state.exists());
    let out = bed.driver(&["gc", "--state-dir", bed.state_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&job.vm_name()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The other side of the sweep: a VM whose supervisor is alive belongs to a live job, even
/// when the job's prepare is long gone, and `gc` leaves it alone.
#[test]
fn gc_leaves_a_live_jobs_vm_alone() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let out = bed.driver(&["gc", "--state-dir", bed.state_dir.to_str().unwrap()]);
    assert!(out.status.success());
    let (code, log) = bed.run_script(&job, "build_script", b"echo survived-gc\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("survived-gc"), "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

#[test]
fn kill_9_of_a_run_stage_leaves_a_vm_that_cleanup_removes() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let script = job.dir.path().join("long");
    std::fs::write(&script, "sleep 300\n").unwrap();
    let mut run = bed
        .stage_command(&job, &["run", script.to_str().unwrap(), "build_script"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    kill_group(run.id(), libc::SIGKILL);
    let _ = run.wait();
    // The job's connection survives its stages: the next stage still works...
    let (code, log) = bed.run_script(&job, "after_script", b"echo still-here\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("still-here"), "{log}");
    // ...and cleanup removes everything.
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn kill_9_of_cleanup_midway_is_finished_by_the_next_cleanup_or_sweep() {
    let bed = Bed::new();
    for repeat_cleanup in [true, false] {
        let job = bed.direct_job(MACOS);
        let (code, log) = bed.stage(&job, &["prepare"]);
        assert_eq!(code, 0, "{log}");
        let mut cleanup = bed
            .stage_command(&job, &["cleanup"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it while it stops the VM.
        wait_until(Duration::from_secs(10), || {
            !pids_with_args(&["stop", &job.vm_name()]).is_empty()
        });
        kill_group(cleanup.id(), libc::SIGKILL);
        let _ = cleanup.wait();
        if repeat_cleanup {
            let (code, log) = bed.stage(&job, &["cleanup"]);
            assert_eq!(code, 0, "{log}");
        } else {
            let out = bed.driver(&["gc", "--state-dir", bed.state_dir.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bed.assert_nothing_left_within(Duration::from_secs(15));
    }
}

// --- SIGTERM (cancel) ------------------------------------------------------------------------

/// gitlab-runner cancels a prepare with SIGTERM to its process group. The driver handles it
/// itself, at every point of prepare: it says so, removes the VM (no cleanup needed) and
/// exits with the system-failure code within seconds, not killed by the signal.
#[test]
fn sigterm_during_prepare_removes_the_vm_and_exits_with_a_system_failure() {
    let bed = Bed::new()
        .image(FAULTY, Image::darwin().pull_ms(1500).boot_delay_ms(5000))
        .option(["--concurrency", "1"]);
    let blocker = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&blocker, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    // Points: while `tart pull` runs, while waiting for the slot the blocker holds, and
    // (once the blocker is gone) while the VM boots.
    for point in ["pull", "slot", "boot"] {
        let job = bed.direct_job(FAULTY);
        let mut prepare = bed
            .stage_command(&job, &["prepare"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let vm = job.vm_name();
        let reached = wait_until(Duration::from_secs(30), || match point {
            "pull" => !pids_with_args(&["pull", FAULTY]).is_empty(),
            "slot" => bed.sim.local_vms().iter().any(|v| v.name == vm),
            _ => !pids_with_args(&["run", &vm]).is_empty(),
        });
        assert!(reached, "prepare never reached {point}");
        std::thread::sleep(Duration::from_millis(300));
        let signalled = Instant::now();
        kill_group(prepare.id(), libc::SIGTERM);
        let status = wait_child(&mut prepare, Duration::from_secs(15));
        let out = prepare.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status, Some(Some(2)), "{point}: {log}");
        assert!(
            log.contains("Prepare cancelled: removing VM"),
            "{point}: {log}"
        );
        assert!(signalled.elapsed() < Duration::from_secs(15));
        assert!(
            !bed.sim.local_vms().iter().any(|v| v.name == vm),
            "{point}: the VM is still there"
        );
        if point == "slot" {
            let (code, log) = bed.stage(&blocker, &["cleanup"]);
            assert_eq!(code, 0, "{log}");
        }
    }
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// A prepare waits up to 30 s for its VM's lock (an earlier attempt of the job, a sweep
/// still holds it). gitlab-runner's SIGTERM during that wait ends the stage as a cancel
/// before the wait would have run out, and the record the holder still has is left to
/// it: the cancel's teardown could not take its lock, so it does not remove it.
#[test]
fn sigterm_while_prepare_waits_for_its_vms_lock_cancels_and_leaves_the_held_record() {
    let bed = Bed::new();
    let job = bed.direct_job(common::LINUX);
    let vm = job.vm_name();
    // The holder: the record as the driver makes it (0700 directories), its lock taken.
    let record = bed.state_dir.join("vms").join(&vm);
    for dir in [
        bed.state_dir.clone(),
        bed.state_dir.join("vms"),
        record.clone(),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let holder = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(record.join("lock"))
        .unwrap();
    std::fs::set_permissions(record.join("lock"), std::fs::Permissions::from_mode(0o600)).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this test owns; dropping it releases the lock.
    assert_eq!(
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("prepare.log");
    let mut prepare = bed
        .stage_command(&job, &["prepare"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let waiting = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("Preparing VM"))
    });
    assert!(waiting, "prepare never started");
    std::thread::sleep(Duration::from_millis(500));
    kill_group(prepare.id(), libc::SIGTERM);
    // The cancel's own teardown waits 15 s for the lock; the prepare's wait alone is 30 s.
    let status = wait_child(&mut prepare, Duration::from_secs(28));
    if status.is_none() {
        kill_group(prepare.id(), libc::SIGKILL);
        let _ = prepare.wait();
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status, Some(Some(2)), "{log}");
    assert!(log.contains("Prepare cancelled: removing VM"), "{log}");
    assert!(!log.contains("still held by an earlier attempt"), "{log}");
    assert!(record.exists(), "the held record was removed: {log}");
    assert!(log.contains("left for it, or for the next `gc`"), "{log}");
    drop(holder);
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    assert!(!record.exists(), "{log}");
    bed.assert_nothing_left();
}

/// The script starts `sleep 300` and writes its pid; the build is cancelled; `after_script`
/// (which the runner still calls after a cancel) looks for that pid in the same guest.
#[test]
fn sigterm_during_a_run_stage_stops_the_remote_command_within_two_seconds() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .script(["sleep 300 & echo $! > /tmp/victim.pid; echo started; wait"])
            .after_script([
                "if kill -0 $(cat /tmp/victim.pid) 2>/dev/null; then echo VICTIM-ALIVE; else echo VICTIM-GONE; fi",
            ])
            .cancel_after("build_script", Duration::from_secs(2)),
    );
    out.assert_verdict(Verdict::Canceled);
    out.assert_log_contains("started")
        .assert_log_contains("VICTIM-GONE");
    assert!(
        !out.log.lines().any(|l| l.trim() == "VICTIM-ALIVE"),
        "{}",
        out.log
    );
    let build = out.stage("build_script").expect("build ran");
    assert!(!build.sigkilled);
    // Cancelled 2 s after it started; the stage (and the remote sleep) ended within 2 s more.
    assert!(
        build.duration < Duration::from_secs(4),
        "build_script took {:?}",
        build.duration
    );
    bed.assert_nothing_left();
}

// --- The host reboots ------------------------------------------------------------------------

/// Everything of the driver's on the host dies at once and its state directory (in /tmp) is
/// gone, as after a reboot; Tart's VMs stay on disk. The sweep recovers, and new jobs run.
#[test]
fn after_a_host_reboot_the_sweep_removes_every_leftover_vm() {
    // A 2-core test box gives each VM 1 CPU, below macOS's minimum of 2.
    let bed = Bed::new().option(["--concurrency", "2", "--cpu", "2"]);
    let jobs = [bed.direct_job(MACOS), bed.direct_job(common::LINUX)];
    for job in &jobs {
        let (code, log) = bed.stage(job, &["prepare"]);
        assert_eq!(code, 0, "{log}");
    }
    assert_eq!(bed.sim.running_count(), 2);
    // The reboot: every supervisor, tart run, guest and ssh master dies.
    let state = bed.state_dir.display().to_string();
    let home = bed.sim.tart_home().display().to_string();
    for needle in [&state, &home] {
        for pid in pids_with_args(&[needle]) {
            // SAFETY: kill(2) on processes of this test's simulated host.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    assert!(wait_until(Duration::from_secs(10), || pids_with_args(&[
        &state
    ])
    .is_empty()));
    std::fs::remove_dir_all(&bed.state_dir).unwrap();
    // Sweep on the next job's prepare (and via gc): both VMs gone, the new job runs.
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script(["echo after-reboot"]),
    );
    out.assert_success()
        .assert_log_contains("after-reboot")
        .assert_log_contains("Removed 2 orphaned VM(s)");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- Concurrency -----------------------------------------------------------------------------

/// Apple allows two macOS guests per host. With `--concurrency 3`, the driver itself keeps
/// the third job waiting, and says so, instead of calling `tart run` (which would fail with
/// Tart's limit error): at no moment do three of its `tart run`s overlap, as the
/// simulator's record of every Tart command shows.
#[test]
fn three_concurrent_macos_jobs_never_run_more_than_two_guests() {
    // A 2-core test box gives each VM 1 CPU, below macOS's minimum of 2.
    let bed = Bed::new().option(["--concurrency", "3", "--cpu", "2"]);
    let runner = bed.runner();
    let started = Instant::now();
    let outs: Vec<JobOutcome> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..3)
            .map(|i| {
                let runner = runner.clone();
                s.spawn(move || {
                    run_job(
                        &runner,
                        &Job::new()
                            .image(MACOS)
                            .script([format!("echo job-{i}; sleep 3")]),
                    )
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (i, out) in outs.iter().enumerate() {
        out.assert_success()
            .assert_log_contains(&format!("job-{i}"));
    }
    assert!(
        outs.iter()
            .any(|o| o.log.contains("Waiting for a free macOS VM slot")),
        "no job waited for a slot"
    );
    let runs: Vec<_> = bed
        .sim
        .invocations()
        .into_iter()
        .filter(|i| i.args.first().map(String::as_str) == Some("run"))
        .collect();
    assert_eq!(runs.len(), 3, "one `tart run` per job: {runs:?}");
    for run in &runs {
        let overlapping = runs
            .iter()
            .filter(|o| {
                o.started_ms <= run.started_ms && o.ended_ms.is_none_or(|e| e > run.started_ms)
            })
            .count();
        assert!(
            overlapping <= 2,
            "a third `tart run` started while two ran: {runs:?}"
        );
    }
    assert_within(started, Duration::from_secs(90));
    bed.assert_nothing_left();
}
