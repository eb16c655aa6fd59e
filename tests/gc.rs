//! The orphan sweep: what `gc` (and every prepare and cleanup) removes, and what it leaves.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Bed, MACOS};
use harness::{run_job, Job};

fn gc(bed: &Bed, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["gc", "--state-dir", bed.state_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = bed.driver(&args);
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Leaves a job's VM running with its connection, as if gitlab-runner died before cleanup.
fn abandoned_job(bed: &Bed) -> String {
    let out = run_job(
        &bed.runner().cleanup_exec(None),
        &Job::new().image(MACOS).script(["true"]),
    );
    out.assert_success();
    bed.sim
        .local_vms()
        .into_iter()
        .find(|v| v.name.starts_with("tartdrv-"))
        .expect("the job's VM")
        .name
}

/// A job whose driver and VM processes all died (gitlab-runner killed, host crash): its VM
/// is an orphan.
fn orphaned_job(bed: &Bed) -> String {
    let vm = abandoned_job(bed);
    kill_matching(&format!("supervise --vm {vm}"));
    kill_matching(&format!("tart run {vm}"));
    vm
}

fn kill_matching(needle: &str) {
    let _ = Command::new("pkill").args(["-KILL", "-f", needle]).status();
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_vm_whose_supervisor_died_is_removed() {
    let bed = Bed::new();
    let vm = orphaned_job(&bed);
    let out = gc(&bed, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("removed orphaned VM {vm}")));
    bed.assert_nothing_left();
}

#[test]
fn a_vm_whose_state_was_lost_in_a_reboot_is_removed() {
    let bed = Bed::new();
    let vm = abandoned_job(&bed);
    // A reboot: every process gone, /tmp (the state directory) wiped.
    kill_matching(&format!("supervise --vm {vm}"));
    kill_matching(&format!("tart run {vm}"));
    std::fs::remove_dir_all(&bed.state_dir).unwrap();
    gc(&bed, &[]);
    assert!(bed.sim.local_vms().is_empty(), "{:?}", bed.sim.local_vms());
    bed.assert_nothing_left();
}

#[test]
fn state_left_without_a_vm_is_removed() {
    let bed = Bed::new();
    let vm = orphaned_job(&bed);
    bed.sim.tart_ok(["delete", &vm]);
    assert!(bed.state_dir.join("vms").join(&vm).exists());
    gc(&bed, &[]);
    bed.assert_nothing_left();
}

#[test]
fn a_live_jobs_vm_and_foreign_vms_are_left_alone() {
    let bed = Bed::new();
    let vm = abandoned_job(&bed); // its supervisor still holds the VM: a live job
    bed.sim.tart_ok(["clone", MACOS, "someone-elses-vm"]);
    let out = gc(&bed, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no orphaned VMs"));
    let names: Vec<_> = bed.sim.local_vms().into_iter().map(|v| v.name).collect();
    assert!(
        names.contains(&vm) && names.contains(&"someone-elses-vm".to_string()),
        "{names:?}"
    );
}

#[test]
fn dry_run_reports_without_removing() {
    let bed = Bed::new();
    let vm = orphaned_job(&bed);
    let out = gc(&bed, &["--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("would remove orphaned VM {vm}"))
    );
    assert!(bed.sim.local_vms().iter().any(|v| v.name == vm));
    gc(&bed, &[]);
    bed.assert_nothing_left();
}

#[test]
fn the_next_jobs_prepare_sweeps_orphans() {
    let bed = Bed::new();
    let vm = orphaned_job(&bed);
    let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    out.assert_success()
        .assert_log_contains("Removed 1 orphaned VM(s) left by earlier jobs");
    assert!(
        !out.log.contains(&vm),
        "another job's VM named in this job's log"
    );
    assert!(bed.sim.local_vms().iter().all(|v| v.name != vm));
    bed.assert_nothing_left();
}

#[test]
fn old_cached_images_are_pruned_on_request() {
    let bed = Bed::new();
    bed.sim.tart_ok(["pull", MACOS]);
    // Last used ten days ago (Tart reads the access time).
    let cache = bed.sim.tart_home().join("cache");
    let touched = Command::new("find")
        .arg(&cache)
        .args([
            "-exec",
            "touch",
            "-h",
            "-a",
            "-m",
            "-d",
            "10 days ago",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(touched.success());
    gc(&bed, &["--prune-images-older-than", "30"]);
    assert_eq!(
        bed.sim.list().iter().filter(|e| e.source == "OCI").count(),
        2,
        "pruned too early"
    );
    gc(&bed, &["--prune-images-older-than", "5"]);
    assert!(
        bed.sim.list().iter().all(|e| e.source != "OCI"),
        "{:?}",
        bed.sim.list()
    );
}

#[test]
fn a_vm_that_outlived_its_jobs_timeout_is_removed_though_its_supervisor_lives() {
    let bed = Bed::new();
    let vm = abandoned_job(&bed); // gitlab-runner killed before cleanup; supervisor alive
    gc(&bed, &[]);
    assert!(
        bed.sim.local_vms().iter().any(|v| v.name == vm),
        "a live job's VM was removed"
    );
    // Its job's timeout (plus the margin) has passed.
    std::fs::write(
        bed.state_dir.join("vms").join(&vm).join("expires"),
        "boot 1",
    )
    .unwrap();
    let out = gc(&bed, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("removed orphaned VM {vm}")));
    bed.assert_nothing_left();
}

/// Another state directory (a second runner service, an admin's shell whose default differs)
/// has no proof that a running job's VM is its own: its gc leaves the VM alone, says so, and
/// the job goes on.
#[test]
fn gc_from_another_state_dir_leaves_a_running_job_alone() {
    let bed = Bed::new();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let other = bed.sim.root().join("other-state");
    let out = bed.driver(&["gc", "--state-dir", other.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("left alone VM {}", job.vm_name())),
        "{stderr}"
    );
    let (code, log) = bed.run_script(&job, "build_script", b"echo survived-foreign-gc\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("survived-foreign-gc"), "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

/// Even a real orphan (its supervisor dead) is not another state directory's to remove:
/// only the directory that holds its record, or that its owner marker names, sweeps it.
#[test]
fn an_orphan_is_swept_only_by_its_own_state_dir() {
    let bed = Bed::new();
    let vm = orphaned_job(&bed);
    let other = bed.sim.root().join("other-state");
    let out = bed.driver(&["gc", "--state-dir", other.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(bed.sim.local_vms().iter().any(|v| v.name == vm));
    let out = gc(&bed, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("removed orphaned VM {vm}")));
    bed.assert_nothing_left();
}

/// The sweep decides a VM is an orphan while holding its lock, and keeps holding it until
/// the VM is gone: a retried prepare of that very job waits for the teardown instead of
/// starting a new VM of the same name that the teardown would then stop and delete.
#[test]
fn a_retried_prepare_waits_for_the_sweeps_teardown_of_its_old_vm_and_keeps_its_new_one() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new();
    let job = bed.direct_job(common::LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    // The VM stops on its own (its supervisor records that and ends): an orphan.
    bed.sim.tart_ok(["stop", &job.vm_name()]);
    assert!(common::wait_until(Duration::from_secs(10), || bed
        .sim
        .local_vms()
        .iter()
        .any(|v| v.name == job.vm_name() && v.state == "stopped")));
    // gc's Tart is slow to stop a VM: the window in which the sweep has decided and the
    // teardown has not yet stopped anything.
    let dir = tempfile::tempdir().unwrap();
    let stopping = dir.path().join("stopping");
    let slow_tart = dir.path().join("slow-tart");
    std::fs::write(
        &slow_tart,
        format!(
            "#!/bin/sh\nif [ \"$1\" = stop ]; then : > '{}'; sleep 4; fi\nexec '{}' \"$@\"\n",
            stopping.display(),
            bed.sim.tart_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow_tart, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gc = Command::new(common::DRIVER)
        .args(["gc", "--state-dir"])
        .arg(&bed.state_dir)
        .arg("--tart-executable")
        .arg(&slow_tart)
        .envs(bed.sim.env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(30), || stopping.exists()),
        "gc never tried to stop the orphan"
    );
    let (code, log) = bed.stage(&job, &["prepare"]);
    let gc = gc.wait_with_output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(code, 0, "{log}");
    let (code, log) = bed.run_script(&job, "build_script", b"echo still-mine\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("still-mine"), "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}
