//! The warm pool and the host's slots and deadlines, end to end: a warm VM never keeps a
//! job from its slot, a claimed one holds a job's slot, and a job's wait for a booted VM is
//! one boot timeout whichever way it goes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::warm::*;
use common::{wait_until, Bed, LINUX, MACOS};
use harness::sim::Image;

const SLOW: &str = "ghcr.io/cirruslabs/slow:latest";
/// A Linux image without Tart's guest agent: the job reaches it over SSH only.
const PLAIN: &str = "ghcr.io/cirruslabs/plain:latest";

fn slot_names(bed: &Bed) -> Vec<String> {
    bed.held_slots()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_cold_macos_job_gets_the_slot_of_the_warm_vm_it_stopped_even_while_a_replenisher_boots_one() {
    // One macOS slot, held by the warm VM until a job that cannot use it needs it.
    let bed = Bed::new().option([
        "--warm-pool",
        "1",
        "--warm-image",
        MACOS,
        "--macos-vm-limit",
        "1",
        "--cpu",
        "2",
    ]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    let stopped = FaultPoint::new("job:stopped-a-warm-vm");
    let job = bed
        .direct_job(MACOS)
        .var("TART_EXECUTOR_DISPLAY", "1920x1080");
    let prepare = bed
        .stage_command(&job, &["prepare"])
        .envs(stopped.pause())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        stopped.reached_within(Duration::from_secs(120)),
        "the job never stopped the warm VM"
    );
    // The warm VM is gone and the job has not taken its slot yet: the replenisher the job
    // started, and another one now, try to boot the pool's replacement into that slot.
    settle(&bed);
    let (_, refill) = warm(&bed, &[]);
    stopped.release();
    let (ok, log) = finish_within(prepare, Duration::from_secs(120), "the job's prepare");
    assert!(ok, "{log}\n--- replenisher:\n{refill}");
    // One warm VM stopped for the job, and no replacement booted into its slot meanwhile.
    assert_eq!(
        log.matches("Stopped a warm VM to give this job its macOS slot")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !refill.contains("is ready"),
        "a warm VM took the slot the job was waiting for:\n{refill}"
    );
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}

#[test]
fn a_claimed_warm_vm_holds_a_job_slot_and_gives_its_warm_slot_to_the_next_warm_vm() {
    let bed = warm_bed();
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Claimed a warm VM"), "{log}");
    // The replacement the claim started is booted.
    settle(&bed);
    assert_eq!(ready_unclaimed(&bed).len(), 1);
    let held = slot_names(&bed);
    // --concurrency 1: the one job slot is the claimed VM's, as a cold job's VM's would be.
    assert!(held.contains(&"vm-0".to_string()), "{held:?}");
    assert_eq!(
        held.iter().filter(|s| s.starts_with("warm-")).count(),
        1,
        "only the unclaimed warm VM holds a warm slot: {held:?}"
    );
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}

#[test]
fn waiting_for_a_booting_warm_vm_is_part_of_the_jobs_one_boot_timeout() {
    // Neither the warm VM nor the job's own boots within the 30 s boot timeout.
    let bed = Bed::new()
        .image(SLOW, Image::linux().agent(true).boot_delay_ms(120_000))
        .option(["--warm-pool", "1", "--warm-image", SLOW, "--timeout", "30"]);
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["warm".to_string(), "--state-dir".into(), state];
    args.extend(bed.options.iter().cloned());
    let filling = std::process::Command::new(common::DRIVER)
        .args(&args)
        .envs(bed.sim.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || warm_records(&bed)
        .iter()
        .any(|p| p.join("warm.json").exists())));
    let job = bed.direct_job(SLOW);
    let t = Instant::now();
    let (code, log) = bed.stage(&job, &["prepare"]);
    let took = t.elapsed();
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("Waiting for a warm VM that is still booting"),
        "{log}"
    );
    // One boot timeout for both, not 30 s for the warm VM and 30 more for its own (the
    // margin is the clone and the checks around the boot, on a loaded host).
    assert!(
        took < Duration::from_secs(48),
        "prepare took {took:?}:\n{log}"
    );
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    let _ = finish_within(filling, Duration::from_secs(120), "the replenisher");
    drain_and_check(&bed);
}

/// Stops (SIGSTOP) every process of a simulated guest: the VM runs, but nothing in it
/// answers, as a hung macOS guest.
fn freeze_guest(bed: &Bed, vm: &str) {
    let run: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            bed.sim
                .tart_home()
                .join("vms")
                .join(vm)
                .join("sim-run.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let init = run["init_pid"].as_u64().unwrap();
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let guest = ns(&init.to_string()).unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid.parse::<i32>().is_ok() && ns(&pid).as_ref() == Some(&guest) {
            // SAFETY: kill(2) of a guest process of this test's simulator.
            unsafe { libc::kill(pid.parse().unwrap(), libc::SIGSTOP) };
        }
    }
}

#[test]
fn a_job_whose_claimed_warm_vm_does_not_answer_boots_its_own_instead_of_failing() {
    let bed =
        Bed::new()
            .image(PLAIN, Image::linux())
            .option(["--warm-pool", "1", "--warm-image", PLAIN]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let ready = ready_unclaimed(&bed);
    assert_eq!(ready.len(), 1, "{log}");
    let hung = ready[0].file_name().unwrap().to_string_lossy().into_owned();
    freeze_guest(&bed, &hung);
    // Its first prepare succeeds (gitlab-runner would retry a failed one, hiding a failure).
    let job = bed.direct_job(PLAIN);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Claimed a warm VM"), "{log}");
    assert!(log.contains("did not let this job in"), "{log}");
    let (code, out) = bed.run_script(&job, "build_script", b"echo built\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("built"), "{out}");
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !bed.sim.list().iter().any(|v| v.name == hung),
        "the hung warm VM is still there"
    );
    drain_and_check(&bed);
}

#[test]
fn the_replenisher_started_by_a_stage_reads_a_config_file_given_by_a_relative_path() {
    let bed = Bed::new();
    let job = bed.direct_job(LINUX);
    std::fs::write(
        job.dir.path().join("driver.yaml"),
        format!("warm_pool: 1\nwarm_images: [\"{LINUX}\"]\n"),
    )
    .unwrap();
    // The stage runs in the job's directory (gitlab-runner's per-job temp dir).
    let (code, log) = bed.stage(&job, &["prepare", "--config", "driver.yaml"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("No warm VM for this job"), "{log}");
    settle(&bed);
    let pool_log =
        std::fs::read_to_string(bed.state_dir.join("warm/replenish.log")).unwrap_or_default();
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{pool_log}");
    let (code, out) = bed.stage(&job, &["cleanup", "--config", "driver.yaml"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}

#[test]
fn doctor_names_the_driver_vms_of_another_state_directory_as_sharing_apples_limit() {
    // Another runner on this Mac (here: another state directory of the same user) keeps a
    // warm macOS VM: its slots and pool are its own, Apple's two macOS VMs are shared.
    let bed = Bed::new().option(["--warm-pool", "1", "--warm-image", MACOS, "--cpu", "2"]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let ready = ready_unclaimed(&bed);
    assert_eq!(ready.len(), 1, "{log}");
    let theirs = ready[0].file_name().unwrap().to_string_lossy().into_owned();
    let mine = bed.sim.root().join("my-state");
    let out = bed.driver(&[
        "doctor",
        "--format",
        "json",
        "--state-dir",
        mine.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let check = report
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "VMs not started by this driver")
        .unwrap_or_else(|| panic!("no such check: {report:#}"))
        .clone();
    assert_eq!(check["status"], "warn", "{check:#}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("driver VM {theirs} of another state directory")),
        "{check:#}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("Apple's two macOS VMs are the Mac's"),
        "{check:#}"
    );
    drain_and_check(&bed);
}

#[test]
fn a_warm_vm_that_meets_apples_limit_full_of_other_vms_is_not_recorded_as_a_failed_boot() {
    let bed = Bed::new().option(["--warm-pool", "1", "--warm-image", MACOS, "--cpu", "2"]);
    // Another user of the Mac runs two macOS VMs: Apple's limit is full.
    let developer = bed.sim.another_user();
    let mut runs = Vec::new();
    for vm in ["developers-vm-1", "developers-vm-2"] {
        developer.tart_ok(["clone", common::MACOS_VANILLA, vm]);
        runs.push(
            developer
                .command(["run", vm, "--no-graphics"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tart run"),
        );
    }
    assert!(wait_until(Duration::from_secs(30), || developer
        .running_count()
        == 2));
    let (_, log) = warm(&bed, &["--background"]);
    assert!(log.contains("Apple's limit is full"), "{log}");
    assert!(!log.contains("failed to boot"), "{log}");
    assert!(!bed.state_dir.join("warm/failures.json").exists(), "{log}");
    assert!(warm_records(&bed).is_empty(), "{log}");
    developer.stop_and_delete_all();
    for mut run in runs {
        let _ = run.wait();
    }
    // With room again, the next pass boots the warm VM.
    let (ok, log) = warm(&bed, &["--background"]);
    assert!(ok, "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    drain_and_check(&bed);
}

/// Starts `cmd` with its job log (stdout and stderr) going to `log`, which a test can read
/// while the stage runs.
fn spawn_logged(mut cmd: std::process::Command, log: &std::path::Path) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

fn read_log(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn a_job_that_waits_longer_than_the_boot_timeout_for_a_job_slot_still_gets_its_claimed_warm_vm() {
    // --concurrency 1: the second job's claim waits for the first job's slot.
    let bed = warm_bed().option(["--timeout", "15"]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let first = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&first, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    // The claim's replenisher boots the next warm VM, which the second job claims.
    settle(&bed);
    assert_eq!(ready_unclaimed(&bed).len(), 1);
    let second = bed.direct_job(LINUX);
    let log_path = second.dir.path().join("prepare.log");
    let prepare = spawn_logged(bed.stage_command(&second, &["prepare"]), &log_path);
    assert!(
        wait_until(Duration::from_secs(60), || read_log(&log_path)
            .contains("Waiting for a free VM slot")),
        "{}",
        read_log(&log_path)
    );
    // The first job runs past the second one's boot timeout, as any job longer than it
    // does: the wait for its slot is no part of the second job's boot.
    std::thread::sleep(Duration::from_secs(17));
    let (code, out) = bed.stage(&first, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    let (ok, _) = finish_within(prepare, Duration::from_secs(60), "the second prepare");
    let log = read_log(&log_path);
    assert!(ok, "{log}");
    assert!(log.contains("Claimed a warm VM"), "{log}");
    assert!(!log.contains("did not let this job in"), "{log}");
    let (code, out) = bed.run_script(&second, "build_script", b"echo built\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("built"), "{out}");
    let (code, out) = bed.stage(&second, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}

#[test]
fn a_cold_macos_job_without_a_job_slot_yet_leaves_the_warm_vm_running() {
    // One job slot and one macOS slot: a Linux job holds the first, a warm macOS VM the
    // second.
    let bed = Bed::new().option([
        "--warm-pool",
        "1",
        "--warm-image",
        MACOS,
        "--macos-vm-limit",
        "1",
        "--cpu",
        "2",
    ]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    let linux = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&linux, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    settle(&bed);
    // A macOS job the warm VM does not fit: it needs both slots.
    let macos = bed
        .direct_job(MACOS)
        .var("TART_EXECUTOR_DISPLAY", "1920x1080");
    let log_path = macos.dir.path().join("prepare.log");
    let prepare = spawn_logged(bed.stage_command(&macos, &["prepare"]), &log_path);
    assert!(
        wait_until(Duration::from_secs(60), || read_log(&log_path)
            .contains("Waiting for a free macOS VM slot")),
        "{}",
        read_log(&log_path)
    );
    // It cannot start before the Linux job ends: the warm VM stays until then.
    let log = read_log(&log_path);
    assert!(!log.contains("Stopped a warm VM"), "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    let (code, out) = bed.stage(&linux, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    let (ok, _) = finish_within(prepare, Duration::from_secs(120), "the macOS prepare");
    let log = read_log(&log_path);
    assert!(ok, "{log}");
    assert_eq!(
        log.matches("Stopped a warm VM to give this job its macOS slot")
            .count(),
        1,
        "{log}"
    );
    let (code, out) = bed.stage(&macos, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}

#[test]
fn a_warm_vm_stopped_by_a_job_before_tart_run_started_is_not_a_failed_boot() {
    let bed = Bed::new().option([
        "--warm-pool",
        "1",
        "--warm-image",
        MACOS,
        "--macos-vm-limit",
        "1",
        "--cpu",
        "2",
    ]);
    // The replenisher has recorded the warm VM (a job may stop it from now on) and not
    // started `tart run` yet.
    let recorded = FaultPoint::new("replenish:recorded");
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["warm".to_string(), "--state-dir".into(), state];
    args.extend(bed.options.iter().cloned());
    let filling = std::process::Command::new(common::DRIVER)
        .args(&args)
        .envs(bed.sim.env())
        .envs(recorded.pause())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        recorded.reached_within(Duration::from_secs(120)),
        "the replenisher never recorded its VM"
    );
    let warm_vm = warm_records(&bed).pop().expect("the warm VM's record");
    // A macOS job the warm VM does not fit stops it for its macOS slot.
    let job = bed
        .direct_job(MACOS)
        .var("TART_EXECUTOR_DISPLAY", "1920x1080");
    let prepare = bed
        .stage_command(&job, &["prepare"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || warm_vm
            .join("warm-claim")
            .exists()),
        "the job never stopped the warm VM"
    );
    recorded.release();
    let (_, refill) = finish_within(filling, Duration::from_secs(120), "the replenisher");
    let (ok, log) = finish_within(prepare, Duration::from_secs(120), "the job's prepare");
    assert!(ok, "{log}\n--- replenisher:\n{refill}");
    assert!(
        log.contains("Stopped a warm VM to give this job its macOS slot"),
        "{log}"
    );
    // Not the image's fault: the pool goes on booting it.
    assert!(!refill.contains("failed to boot"), "{refill}");
    assert!(
        !bed.state_dir.join("warm/failures.json").exists(),
        "{refill}"
    );
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    drain_and_check(&bed);
}
