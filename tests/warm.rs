//! The warm pool (`--warm-pool`), end to end: VMs booted ahead of jobs, claimed by exactly
//! one job each, never reused, given back to cold jobs, and cleaned up whatever happens.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Bed, LINUX, MACOS};
use harness::sim::Image;
use harness::{run_job, Job};

use common::warm::*;

#[test]
fn the_second_of_two_back_to_back_jobs_gets_a_warm_vm_booted_during_the_first() {
    let bed = warm_bed();
    let job = Job::new()
        .image(LINUX)
        .script(["echo marker > $CI_PROJECT_DIR/../from-$CI_JOB_ID"]);
    let first = run_job(&bed.runner(), &job.clone().id(101));
    first
        .assert_success()
        .assert_log_contains("No warm VM for this job: the pool has no warm VM right now");
    assert!(wait_until(Duration::from_secs(60), || ready_unclaimed(
        &bed
    )
    .len()
        == 1));
    let second = run_job(&bed.runner(), &job.clone().id(102));
    second
        .assert_success()
        .assert_log_contains("Claimed a warm VM booted");
    // The pool is refilled after the claim and after each cleanup, never with a used VM.
    settle(&bed);
    let started = started_vms(&bed);
    let mut unique = started.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        started.len(),
        "a VM was started twice: {started:?}"
    );
    drain_and_check(&bed);
}

#[test]
fn two_prepares_racing_for_one_warm_vm_never_share_it() {
    let bed = warm_bed().option(["--concurrency", "2", "--no-softnet"]);
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    let a = bed.direct_job(LINUX);
    let b = bed.direct_job(LINUX);
    let mut pa = bed
        .stage_command(&a, &["prepare"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pb = bed
        .stage_command(&b, &["prepare"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read = |p: &mut std::process::Child| {
        let mut s = String::new();
        std::io::Read::read_to_string(p.stderr.as_mut().unwrap(), &mut s).unwrap();
        assert!(p.wait().unwrap().success(), "{s}");
        s
    };
    let (la, lb) = (read(&mut pa), read(&mut pb));
    let claims = [&la, &lb]
        .iter()
        .filter(|l| l.contains("Claimed a warm VM"))
        .count();
    assert_eq!(
        claims, 1,
        "exactly one prepare claims the one warm VM:\n{la}\n---\n{lb}"
    );
    assert_ne!(prepared_vm(&la), prepared_vm(&lb));
    // Each job's scripts run in its own VM: what one writes, the other does not see.
    let (code, out) = bed.run_script(&a, "build_script", b"touch /tmp/only-a; echo ok-a\n");
    assert_eq!(code, 0, "{out}");
    let (code, out) = bed.run_script(
        &b,
        "build_script",
        b"test ! -e /tmp/only-a && echo clean-b\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean-b"), "{out}");
    for job in [&a, &b] {
        let (code, out) = bed.stage(job, &["cleanup"]);
        assert_eq!(code, 0, "{out}");
    }
    drain_and_check(&bed);
}

#[test]
fn a_job_whose_settings_differ_from_the_warm_vm_boots_its_own() {
    let bed = warm_bed();
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let warm_vm = ready_unclaimed(&bed);
    assert_eq!(warm_vm.len(), 1, "{log}");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(LINUX)
            .var("TART_EXECUTOR_DISPLAY", "1920x1080")
            .script(["true"]),
    );
    out.assert_success().assert_log_contains(
        "No warm VM for this job: the warm VMs differ from this job's in display",
    );
    // The warm VM is still the pool's, untouched.
    settle(&bed);
    assert_eq!(ready_unclaimed(&bed), warm_vm);
    drain_and_check(&bed);
}

/// The registry decides before a claim: a job whose image the registry does not confirm
/// (here it cannot be reached, and the image is not known public any more) fails without
/// taking the warm VM, which stays the pool's, ready and unclaimed.
#[test]
fn a_job_the_registry_does_not_confirm_fails_before_claiming_the_warm_vm() {
    let bed = warm_bed();
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let warm_vm = ready_unclaimed(&bed);
    assert_eq!(warm_vm.len(), 1, "{log}");
    // The public verdict is gone (expired, or lost): the next job is vetted.
    std::fs::remove_dir_all(bed.state_dir.join("public-images")).unwrap();
    bed.sim.cut_registry("ghcr.io", false);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 2, "not a system failure: {log}");
    assert!(
        log.contains("cannot confirm with ghcr.io that this job may use the cached image"),
        "{log}"
    );
    assert!(!log.contains("Claimed a warm VM"), "{log}");
    assert_eq!(ready_unclaimed(&bed), warm_vm, "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    settle(&bed);
    drain_and_check(&bed);
}

#[test]
fn a_cold_macos_job_stops_a_warm_vm_to_get_its_slot() {
    // One macOS slot: the warm VM holds it until a job that cannot use it needs it.
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
    let t = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_DISPLAY", "1920x1080")
            .script(["true"]),
    );
    out.assert_success()
        .assert_log_contains("Stopped a warm VM to give this job its macOS slot");
    assert!(t.elapsed() < Duration::from_secs(120));
    drain_and_check(&bed);
}

#[test]
fn an_expired_warm_vm_is_removed_by_gc() {
    let bed = warm_bed();
    let (ok, log) = warm(&bed, &[]);
    assert!(ok, "{log}");
    let old = ready_unclaimed(&bed);
    assert_eq!(old.len(), 1, "{log}");
    // Its expiry passed (the boot clock is at least 1 s past boot).
    std::fs::write(old[0].join("expires"), "boot 1").unwrap();
    let state = bed.state_dir.display().to_string();
    let out = bed.driver(&["gc", "--state-dir", &state, "--warm-pool", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = old[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !bed.sim.list().iter().any(|v| v.name == name),
        "the expired warm VM is still there"
    );
    drain_and_check(&bed);
}

#[test]
fn a_warm_vm_that_fails_to_boot_is_removed_reported_and_not_booted_again() {
    let bed = Bed::new()
        .image(BROKEN, Image::linux().run_dies(Some("VM crashed at boot")))
        .option(["--warm-pool", "1", "--warm-image", BROKEN]);
    let (_, log) = warm(&bed, &[]);
    assert!(log.contains("failed to boot and was removed"), "{log}");
    assert!(warm_records(&bed).is_empty(), "{log}");
    let clones = |bed: &Bed| {
        bed.sim
            .invocations()
            .iter()
            .filter(|i| i.args.first().map(String::as_str) == Some("clone"))
            .count()
    };
    let before = clones(&bed);
    let (_, log) = warm(&bed, &["--background"]);
    assert!(
        log.contains("not booting") && log.contains("again"),
        "{log}"
    );
    assert_eq!(
        clones(&bed),
        before,
        "a failed image was cloned again:\n{log}"
    );
    drain_and_check(&bed);
}

#[test]
fn a_kill_at_any_point_of_replenish_or_claim_leaves_nothing_gc_does_not_remove() {
    // A boot long enough that some kills land while the warm VM boots.
    let bed = Bed::new()
        .image(
            "ghcr.io/cirruslabs/slow:latest",
            Image::linux().agent(true).boot_delay_ms(1500),
        )
        .option([
            "--warm-pool",
            "1",
            "--warm-image",
            "ghcr.io/cirruslabs/slow:latest",
            "--no-softnet",
        ]);
    let state = bed.state_dir.display().to_string();
    // gc alone leaves nothing but ready, unclaimed warm VMs (the pool's, which a job may
    // still claim), each with its record.
    let gc_without_pool = |bed: &Bed| {
        let out = bed.driver(&["gc", "--state-dir", &state, "--warm-pool", "0"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pool = ready_unclaimed(bed);
        let mut records = bed.vm_state_dirs();
        records.sort();
        assert_eq!(records, pool, "gc left records that are not the pool's");
        let names: Vec<String> = pool
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let vms: Vec<String> = bed.sim.local_vms().into_iter().map(|v| v.name).collect();
        assert_eq!(vms, names, "gc left VMs that are not the pool's");
    };
    for delay_ms in [30, 300, 800, 1500, 2500] {
        // The replenisher, killed mid-pass.
        use std::os::unix::process::CommandExt;
        let mut args = vec!["warm".to_string(), "--state-dir".into(), state.clone()];
        args.extend(bed.options.iter().cloned());
        let mut child = std::process::Command::new(common::DRIVER)
            .args(&args)
            .envs(bed.sim.env())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        common::kill_group(child.id(), libc::SIGKILL);
        let _ = child.wait();
        gc_without_pool(&bed);
        drain_and_check(&bed);
    }
    for delay_ms in [20, 80, 200, 500] {
        // A prepare killed while it claims and connects, then cleanup as gitlab-runner calls it.
        let (ok, log) = warm(&bed, &[]);
        assert!(ok, "{log}");
        let job = bed.direct_job("ghcr.io/cirruslabs/slow:latest");
        let mut child = bed.stage_command(&job, &["prepare"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        common::kill_group(child.id(), libc::SIGKILL);
        let _ = child.wait();
        let (code, out) = bed.stage(&job, &["cleanup"]);
        assert_eq!(code, 0, "{out}");
        settle(&bed);
        gc_without_pool(&bed);
        drain_and_check(&bed);
    }
}

/// After `gc` alone (the admin's agent, the pool on), nothing is left but ready, unclaimed
/// warm VMs, each with its record, and no slot is held but theirs.
fn assert_gc_leaves_only_the_pool(bed: &Bed) {
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["gc", "--state-dir", state.as_str()];
    args.extend(bed.options.iter().map(String::as_str));
    let out = bed.driver(&args);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let pool = ready_unclaimed(bed);
    let mut records = bed.vm_state_dirs();
    records.sort();
    assert_eq!(
        records, pool,
        "gc left records that are not the pool's:\n{log}"
    );
    let names: Vec<String> = pool
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let vms: Vec<String> = bed.sim.local_vms().into_iter().map(|v| v.name).collect();
    assert_eq!(vms, names, "gc left VMs that are not the pool's:\n{log}");
    let held: Vec<String> = bed
        .held_slots()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|s| !s.starts_with("warm-"))
        .collect();
    assert!(held.is_empty(), "slots held with no job: {held:?}\n{log}");
}

#[test]
fn a_crash_at_each_step_of_replenish_or_claim_leaves_nothing_but_the_pool_after_gc() {
    let bed = Bed::new()
        .image(
            "ghcr.io/cirruslabs/slow:latest",
            Image::linux().agent(true).boot_delay_ms(1500),
        )
        .option([
            "--warm-pool",
            "1",
            "--warm-image",
            "ghcr.io/cirruslabs/slow:latest",
            "--no-softnet",
        ]);
    let state = bed.state_dir.display().to_string();
    for point in [
        "replenish:took-slots",
        "replenish:cloned",
        "replenish:started",
        "replenish:answered",
        "replenish:ready",
    ] {
        let fault = FaultPoint::new(point);
        let mut args = vec!["warm", "--state-dir", state.as_str()];
        args.extend(bed.options.iter().map(String::as_str));
        let out = std::process::Command::new(common::DRIVER)
            .args(&args)
            .envs(bed.sim.env())
            .envs(fault.kill())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the replenisher was not killed"
        );
        assert_gc_leaves_only_the_pool(&bed);
        drain_and_check(&bed);
    }
    for point in [
        "claim:named-the-warm-vm",
        "claim:took-the-warm-vm",
        "claim:moved-the-slot",
        "claim:connecting",
    ] {
        // With gitlab-runner's cleanup after the crash, and without it (the runner died too).
        for cleanup in [true, false] {
            let (ok, log) = warm(&bed, &[]);
            assert!(ok, "{log}");
            let fault = FaultPoint::new(point);
            let job = bed.direct_job("ghcr.io/cirruslabs/slow:latest");
            let out = bed
                .stage_command(&job, &["prepare"])
                .envs(fault.kill())
                .output()
                .unwrap();
            assert!(!out.status.success(), "{point}: prepare was not killed");
            if cleanup {
                let (code, out) = bed.stage(&job, &["cleanup"]);
                assert_eq!(code, 0, "{point}: {out}");
            }
            settle(&bed);
            eprintln!("killed at {point}, cleanup: {cleanup}");
            assert_gc_leaves_only_the_pool(&bed);
            drain_and_check(&bed);
        }
    }
}

#[test]
fn without_a_warm_pool_nothing_is_booted_ahead_and_the_log_is_unchanged() {
    let bed = Bed::new();
    for id in [201, 202] {
        let out = run_job(
            &bed.runner(),
            &Job::new().id(id).image(LINUX).script(["true"]),
        );
        out.assert_success();
        assert!(!out.log.contains("warm"), "{}", out.log);
    }
    assert!(!started_vms(&bed)
        .iter()
        .any(|v| v.starts_with("tartdrv-warm-")));
    assert!(!bed.state_dir.join("warm").exists());
    bed.assert_nothing_left();
}

#[test]
fn a_job_arriving_while_a_matching_warm_vm_boots_waits_for_it_instead_of_booting_its_own() {
    let bed = Bed::new()
        .image(
            "ghcr.io/cirruslabs/slow:latest",
            Image::linux().agent(true).boot_delay_ms(3000),
        )
        .option([
            "--warm-pool",
            "1",
            "--warm-image",
            "ghcr.io/cirruslabs/slow:latest",
        ]);
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["warm".to_string(), "--state-dir".into(), state];
    args.extend(bed.options.iter().cloned());
    let mut filling = std::process::Command::new(common::DRIVER)
        .args(&args)
        .envs(bed.sim.env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Cloned and started: its record says what it is started with.
    assert!(wait_until(Duration::from_secs(30), || warm_records(&bed)
        .iter()
        .any(|p| p.join("warm.json").exists())));
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image("ghcr.io/cirruslabs/slow:latest")
            .script(["true"]),
    );
    out.assert_success()
        .assert_log_contains("Waiting for a warm VM that is still booting")
        .assert_log_contains("Claimed a warm VM booted");
    let _ = filling.wait();
    drain_and_check(&bed);
}

#[test]
fn doctor_shows_the_pool_and_its_failed_boots() {
    let bed = Bed::new()
        .image(BROKEN, Image::linux().run_dies(Some("VM crashed at boot")))
        .option([
            "--warm-pool",
            "2",
            "--warm-image",
            LINUX,
            "--warm-image",
            BROKEN,
        ]);
    let (_, log) = warm(&bed, &[]);
    assert!(log.contains("failed to boot"), "{log}");
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["doctor", "--state-dir", state.as_str()];
    args.extend(bed.options.iter().map(String::as_str));
    let out = bed.driver(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("warm pool:"))
        .unwrap_or_else(|| panic!("no warm pool line in:\n{text}"));
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("1 of 2 ready") && line.contains(&format!("{LINUX} ready since")),
        "{line}"
    );
    assert!(
        line.contains(&format!("{BROKEN} (sha256:")) && line.contains("VM crashed at boot"),
        "{line}"
    );
    drain_and_check(&bed);
}

#[test]
fn a_job_after_a_warm_vm_of_its_image_reuses_the_pools_dhcp_lease_instead_of_a_new_mac() {
    // No pool for the job: it clones the image after the warm VM is gone, as the next
    // clone of a claimed and cleaned-up warm VM's image does.
    let bed = Bed::new().option(["--no-softnet"]);
    let pool = ["--warm-pool", "1", "--warm-image", LINUX];
    let (ok, log) = warm(&bed, &pool);
    assert!(ok, "{log}");
    assert_eq!(ready_unclaimed(&bed).len(), 1, "{log}");
    let (ok, log) = warm(&bed, &["--warm-pool", "0"]);
    assert!(ok, "{log}");
    assert!(warm_records(&bed).is_empty(), "{log}");
    // The warm VM's lease (the image's MAC address) outlives it, as bootpd's 24 h leases do.
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("already has a DHCP lease"), "{log}");
    let re_maced = bed.sim.invocations().into_iter().any(|i| {
        i.args.first().map(String::as_str) == Some("set")
            && i.args.iter().any(|a| a == "--random-mac")
    });
    assert!(!re_maced, "the job's clone got a new MAC address:\n{log}");
    let (code, out) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}
