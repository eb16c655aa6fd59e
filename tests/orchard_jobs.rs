//! Whole jobs on the Orchard backend: the harness calls the driver exactly as gitlab-runner
//! does, and the driver talks to the fake controller (tests/orchard-sim), whose Tart worker
//! runs each VM on the simulator with a real OpenSSH guest. After every job nothing of it
//! may be left: no VM on the controller, no Tart VM on the worker, no ssh master, proxy or
//! state on the runner's host.

mod common;

use std::time::{Duration, Instant};

use common::orchard::{job, Fleet, ACCOUNT, TOKEN};
use common::{Bed, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};
use orchard_sim::Account;

#[test]
fn a_job_runs_on_the_fleet_with_one_ssh_login_and_leaves_nothing_behind() {
    let fleet = Fleet::start(|_| {});
    let out = run_job(
        &fleet.bed.runner(),
        &job().script(["echo built-on-$(whoami)", "uname -s"]),
    );
    out.assert_success()
        .assert_log_contains("built-on-admin")
        .assert_log_contains("Orchard: placed on worker mini-1")
        .assert_log_contains("Orchard: VM started");
    assert_eq!(
        fleet.sim.port_forwards_served(),
        1,
        "one SSH login (one port-forward) for prepare and every run stage"
    );
    fleet.assert_nothing_left();
}

#[test]
fn a_failing_script_is_a_build_failure_with_its_exit_code() {
    let fleet = Fleet::start(|_| {});
    let out = run_job(
        &fleet.bed.runner(),
        &job().script(["echo about-to-fail", "exit 3"]),
    );
    out.assert_build_failure(3)
        .assert_log_contains("about-to-fail");
    fleet.assert_nothing_left();
}

#[test]
fn a_cancelled_job_stops_its_script_and_its_vm_is_deleted() {
    let fleet = Fleet::start(|_| {});
    let started = Instant::now();
    let out = run_job(
        &fleet.bed.runner(),
        &job()
            .script(["echo sleeping", "sleep 60", "echo never-printed"])
            .cancel_after("build_script", Duration::from_secs(2)),
    );
    out.assert_verdict(Verdict::Canceled);
    assert!(!out.log.contains("never-printed"), "{}", out.log);
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the cancel did not wait for the script"
    );
    fleet.assert_nothing_left();
}

#[test]
fn a_vm_orchard_fails_is_a_system_failure_with_orchards_message_and_every_attempt_is_cleaned_up() {
    let fleet = Fleet::start(|c| {
        c.faults.fail_vms_with =
            Some("failed to clone the VM: tart command failed: \"no space left on device\"".into());
    });
    let out = run_job(&fleet.bed.runner(), &job());
    out.assert_system_failure()
        .assert_log_contains("no space left on device")
        .assert_log_contains("mini-1");
    assert_eq!(out.prepare_attempts, 3, "{:?}", out.call_sequence());
    assert_eq!(out.cleanups.len(), 3, "{:?}", out.call_sequence());
    fleet.assert_nothing_left();
}

#[test]
fn a_vm_no_worker_takes_fails_the_job_at_the_queue_timeout_once_without_retries_and_is_deleted() {
    let fleet = Fleet::with_options(
        |c| c.faults.pending_forever = true,
        &["--orchard-queue-timeout", "3"],
    );
    let out = run_job(&fleet.bed.runner(), &job());
    out.assert_build_failure(1)
        .assert_log_contains("queue timeout (3s")
        .assert_log_contains("--orchard-queue-timeout")
        .assert_log_contains("waiting for a free worker");
    // A retry would wait again at the back of the queue: one wait of the timeout in all.
    assert_eq!(out.prepare_attempts, 1, "{:?}", out.call_sequence());
    fleet.assert_nothing_left();
}

/// A controller that accepts the VM reads and never answers them: the client's own retries
/// (four tries of 30 s) must not outlast the queue timeout.
#[test]
fn a_controller_that_never_answers_while_the_vm_queues_is_bounded_by_the_queue_timeout() {
    let fleet = Fleet::with_options(
        |c| c.faults.vm_reads_hang = true,
        &["--orchard-queue-timeout", "3"],
    );
    let out = run_job(&fleet.bed.runner(), &job());
    out.assert_build_failure(1)
        .assert_log_contains("queue timeout (3s")
        .assert_log_contains("--orchard-queue-timeout");
    fleet.assert_nothing_left();
}

#[test]
fn sshd_that_comes_up_late_is_waited_for_within_the_boot_timeout() {
    let fleet = Fleet::start(|c| c.faults.slow_sshd_ms = 4000);
    let out = run_job(&fleet.bed.runner(), &job().script(["echo late-but-fine"]));
    out.assert_success().assert_log_contains("late-but-fine");
    assert_eq!(out.prepare_attempts, 1);
    fleet.assert_nothing_left();
}

#[test]
fn port_forward_refusals_while_the_vm_comes_up_are_retried() {
    let fleet = Fleet::start(|c| c.faults.port_forward_errors = vec![503, 500, 408]);
    let out = run_job(&fleet.bed.runner(), &job().script(["echo through"]));
    out.assert_success().assert_log_contains("through");
    assert_eq!(out.prepare_attempts, 1);
    fleet.assert_nothing_left();
}

/// A step no other test runs, so its process names this job's script.
const LONG_STEP: &str = "sleep 29.75";

#[test]
fn a_controller_restart_mid_script_is_a_system_failure_and_nothing_is_left() {
    let fleet = Fleet::start(|_| {});
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| {
            run_job(
                &fleet.bed.runner(),
                &job().script(["echo long-step", LONG_STEP, "echo never-printed"]),
            )
        });
        // The restart comes while the long step runs in the guest (its process is visible
        // from here: the guests are namespaces of this machine).
        let running = common::wait_until(Duration::from_secs(120), || {
            !common::pids_with_args(&LONG_STEP.split(' ').collect::<Vec<_>>()).is_empty()
        });
        fleet.sim.restart(Duration::from_millis(500));
        assert!(running, "the long step never ran");
        job.join().unwrap()
    });
    out.assert_system_failure()
        .assert_log_contains("long-step")
        .assert_log_contains("whether the script finished is unknown");
    assert!(!out.log.contains("never-printed"), "{}", out.log);
    fleet.assert_nothing_left();
}

#[test]
fn a_connection_cut_between_stages_is_reopened_once_and_the_job_goes_on() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    fleet.sim.cut_port_forwards();
    fleet.wait_master_gone();
    let (code, log) = fleet
        .bed
        .run_script(&job, "build_script", b"echo after-the-cut\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("reconnecting once"), "{log}");
    assert!(log.contains("after-the-cut"), "{log}");
    assert_eq!(
        fleet.sim.port_forwards_served(),
        2,
        "one login, one reconnect"
    );
    let (code, log) = fleet.bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    fleet.assert_nothing_left();
}

#[test]
fn a_worker_that_vanishes_fails_the_next_stage_as_a_system_failure() {
    let fleet = Fleet::start(|c| c.worker_offline_timeout_ms = 1000);
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    fleet.sim.vanish_worker("mini-1");
    fleet.sim.cut_port_forwards();
    fleet.wait_master_gone();
    let name = fleet.sim.vms()[0].name.clone();
    assert!(
        fleet
            .sim
            .wait_status(&name, "failed", Duration::from_secs(20)),
        "the fake controller never failed the vanished worker's VM"
    );
    let (code, log) = fleet.bed.run_script(&job, "build_script", b"echo never\n");
    assert_eq!(code, 2, "a system failure: {log}");
    assert!(log.contains("lost connection with the controller"), "{log}");
    let (code, log) = fleet.bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(fleet.sim.vms(), Vec::new(), "VMs left on the controller");
}

#[test]
fn gc_deletes_this_runners_failed_vms_no_live_job_holds_and_leaves_other_clients_vms_alone() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let ours = fleet.sim.vms()[0].name.clone();
    // An earlier attempt of the same job whose delete never reached the controller (this
    // runner's name, no record on the host), and another client's VM; Orchard fails both
    // and keeps them until someone deletes them.
    fleet
        .sim
        .faults(|f| f.fail_vms_with = Some("VM failed: VM exited unexpectedly".into()));
    let earlier = format!("{}-9", ours.rsplit_once('-').unwrap().0);
    for name in [earlier.as_str(), "someone-elses-vm"] {
        let vm = orchard_sim::Vm {
            name: name.into(),
            image: MACOS.into(),
            ..orchard_sim::Vm::default()
        };
        fleet.sim.create_vm(vm).unwrap();
        assert!(fleet
            .sim
            .wait_status(name, "failed", Duration::from_secs(20)));
    }
    let text = fleet.gc(&[]);
    assert!(
        text.contains(&format!("removed orphaned VM {earlier}")),
        "{text}"
    );
    let mut left: Vec<String> = fleet.sim.vms().into_iter().map(|v| v.name).collect();
    left.sort();
    let mut want = vec![ours.clone(), "someone-elses-vm".to_string()];
    want.sort();
    assert_eq!(
        left, want,
        "the live job's VM and the stranger stay: {text}"
    );
    let (code, log) = fleet.bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    let left: Vec<String> = fleet.sim.vms().into_iter().map(|v| v.name).collect();
    assert_eq!(left, ["someone-elses-vm"]);
}

/// Every command line on this machine, one string each.
fn all_command_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            lines.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    lines
}

#[test]
fn the_token_and_the_guest_password_stay_out_of_argv_logs_and_the_vm_object() {
    // The test bed's second guest account (tests/bed/setup-guest-users.sh).
    const PASSWORD: &str = "b-uild3r!pw";
    const IMAGE: &str = "ghcr.io/example/macos-builder-login:latest";
    let bed = Bed::new().image(IMAGE, Image::darwin().credentials("builder", PASSWORD));
    let password_file = bed.sim.root().join("guest-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let file_option = password_file.display().to_string();
    let fleet = Fleet::on(
        bed,
        |_| {},
        &[
            "--ssh-username",
            "builder",
            "--ssh-password-file",
            &file_option,
            "--public-image",
            r"^ghcr\.io/example/macos-builder-login:latest$",
        ],
    );
    let (out, seen, vm_objects) = std::thread::scope(|s| {
        let job = s.spawn(|| {
            run_job(
                &fleet.bed.runner(),
                &Job::new()
                    .image(IMAGE)
                    .script(["sleep 4", "echo logged-in-as-$(whoami)"]),
            )
        });
        let mut seen = Vec::new();
        let mut vm_objects = Vec::new();
        while !job.is_finished() {
            seen.extend(
                all_command_lines()
                    .into_iter()
                    .filter(|l| l.contains(TOKEN) || l.contains(PASSWORD)),
            );
            vm_objects.extend(fleet.sim.vms());
            std::thread::sleep(Duration::from_millis(100));
        }
        (job.join().unwrap(), seen, vm_objects)
    });
    out.assert_success()
        .assert_log_contains("logged-in-as-builder");
    assert_eq!(seen, Vec::<String>::new(), "secrets in a command line");
    for text in [&out.log, &out.runner_log] {
        assert!(!text.contains(TOKEN) && !text.contains(PASSWORD), "{text}");
    }
    assert!(!vm_objects.is_empty(), "the job's VM was never seen");
    for vm in &vm_objects {
        assert_ne!(vm.password, PASSWORD, "the guest password reached Orchard");
    }
    fleet.assert_nothing_left();
}

#[test]
fn a_job_cancelled_while_its_vm_waits_in_orchards_queue_deletes_the_vm() {
    let fleet = Fleet::start(|c| c.faults.pending_forever = true);
    let out = run_job(
        &fleet.bed.runner(),
        &job().cancel_after("prepare", Duration::from_secs(3)),
    );
    out.assert_verdict(Verdict::Canceled)
        .assert_log_contains("waiting for a free worker");
    fleet.assert_nothing_left();
}

#[test]
fn gc_ends_a_dead_jobs_connection_and_deletes_its_vm_once_the_job_has_expired() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    // gitlab-runner died after prepare: no run, no cleanup. The VM runs and counts as
    // live until its job's time is up.
    let gc = || {
        let out = std::process::Command::new(common::DRIVER)
            .arg("gc")
            .arg("--state-dir")
            .arg(&fleet.bed.state_dir)
            .args(&fleet.bed.options)
            .envs(fleet.bed.sim.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gc();
    assert_eq!(fleet.sim.vms().len(), 1, "a live job's VM was swept");
    let record = fleet.bed.vm_state_dirs().pop().expect("the job's record");
    std::fs::write(record.join("expires"), "boot 0").unwrap();
    gc();
    fleet.assert_nothing_left();
}

/// After the runner's host rebooted, its boot clock restarts near zero: a crashed job's
/// record from the last boot counts as expired, not as live for as long as that boot lasted.
#[test]
fn a_record_from_another_boot_of_the_runner_host_is_swept() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let record = fleet.bed.vm_state_dirs().pop().expect("the job's record");
    // Written in a boot that lasted long: on this boot's clock, far in the future.
    std::fs::write(
        record.join("expires"),
        "boot 9000000000 boot-before-the-reboot",
    )
    .unwrap();
    let text = fleet.gc(&[]);
    assert!(text.contains("removed orphaned VM"), "{text}");
    fleet.assert_nothing_left();
}

#[test]
fn a_controller_restart_while_the_vm_waits_in_the_queue_is_ridden_out() {
    let fleet = Fleet::start(|c| c.faults.pending_forever = true);
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| run_job(&fleet.bed.runner(), &job().script(["echo placed-at-last"])));
        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.sim.vms().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        // Down longer than the client's own retries (3.5 s), then the fleet has room.
        fleet.sim.restart(Duration::from_secs(6));
        std::thread::sleep(Duration::from_secs(7));
        fleet.sim.faults(|f| f.pending_forever = false);
        job.join().unwrap()
    });
    out.assert_success().assert_log_contains("placed-at-last");
    assert_eq!(out.prepare_attempts, 1, "{:?}", out.call_sequence());
    fleet.assert_nothing_left();
}

#[test]
fn a_service_account_without_compute_write_fails_the_job_naming_the_role() {
    let fleet = Fleet::start(|c| {
        c.accounts = vec![Account::new(ACCOUNT, TOKEN, &["compute:read"])];
    });
    let out = run_job(&fleet.bed.runner(), &job());
    out.assert_system_failure()
        .assert_log_contains("compute:write")
        .assert_log_contains("lacks a role");
    fleet.assert_nothing_left();
}

#[test]
fn sshd_that_never_answers_fails_the_job_at_the_boot_timeout_and_the_vm_is_deleted() {
    let fleet = Fleet::with_options(
        |c| c.faults.slow_sshd_ms = 600_000,
        &["--orchard-boot-timeout", "5"],
    );
    let started = Instant::now();
    let out = run_job(&fleet.bed.runner(), &job());
    out.assert_system_failure()
        .assert_log_contains("did not answer within the boot timeout (5s)")
        .assert_log_contains("port-forward");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "three attempts of about 5 s each"
    );
    fleet.assert_nothing_left();
}

#[test]
fn two_runners_sharing_a_state_dir_and_a_controller_keep_their_vms_apart() {
    let fleet = Fleet::start(|_| {});
    // Runners of two GitLab instances on one host: their job ids can be equal.
    let a = fleet.bed.direct_job(MACOS).identity("runnera", 4242);
    let b = fleet.bed.direct_job(MACOS).identity("runnerb", 4242);
    let (code, log) = fleet.bed.stage(&a, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = fleet.bed.stage(&b, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let names: Vec<String> = fleet.sim.vms().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 2, "one VM per runner: {names:?}");
    // B's job ends, with its cleanup's sweep; A's VM and its connection stay.
    let (code, log) = fleet.bed.stage(&b, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(fleet.sim.vms().len(), 1, "B's cleanup took A's VM too");
    let (code, log) = fleet
        .bed
        .run_script(&a, "build_script", b"echo still-here\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("still-here"), "{log}");
    assert_eq!(
        fleet.sim.port_forwards_served(),
        2,
        "one login each, no reconnect"
    );
    let (code, log) = fleet.bed.stage(&a, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    fleet.assert_nothing_left();
}

#[test]
fn a_runners_sweep_leaves_another_runners_dead_job_to_its_runner_or_gc() {
    let fleet = Fleet::start(|_| {});
    let a = fleet.bed.direct_job(MACOS).identity("runnera", 5151);
    let (code, log) = fleet.bed.stage(&a, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    // A's gitlab-runner died after prepare, and the job's time is up.
    let record = fleet.bed.state_dir.join("vms").join(a.vm_name());
    std::fs::write(record.join("expires"), "boot 0").unwrap();
    let b = fleet.bed.direct_job(MACOS).identity("runnerb", 6161);
    let (code, log) = fleet.bed.stage(&b, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = fleet.bed.stage(&b, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    assert!(record.exists(), "B's sweeps took A's record");
    assert_eq!(fleet.sim.vms().len(), 1, "B's sweeps took A's VM");
    let text = fleet.gc(&[]);
    assert!(text.contains("removed orphaned VM"), "{text}");
    fleet.assert_nothing_left();
}

/// Whether the controller created `vm` at least `secs` seconds ago (RFC 3339 UTC times
/// compare as text to the second).
fn older_than(vm: &orchard_sim::Vm, secs: u64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let then = orchard_sim::model::rfc3339((now - secs) as i64, 0);
    vm.created_at[..19] <= then[..19]
}

#[test]
fn the_age_sweep_leaves_a_live_jobs_vm_alone_however_old() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let name = fleet.sim.vms()[0].name.clone();
    // Between stages: no lock is held, but the job's time is not up.
    assert!(
        common::wait_until(Duration::from_secs(10), || older_than(
            &fleet.sim.vms()[0],
            3
        )),
        "the VM never grew older than the age given to gc"
    );
    let text = fleet.gc(&["--orchard-max-vm-age", "1"]);
    assert!(!text.contains(&name), "{text}");
    assert_eq!(fleet.sim.vms().len(), 1, "the running job's VM was swept");
    let (code, log) = fleet
        .bed
        .run_script(&job, "build_script", b"echo still-running\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("still-running"), "{log}");
    let (code, log) = fleet.bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    fleet.assert_nothing_left();
}

#[test]
fn a_job_that_may_outlive_the_max_vm_age_is_refused_before_any_vm_exists() {
    let fleet = Fleet::with_options(|_| {}, &["--orchard-max-vm-age", "3600"]);
    let out = run_job(
        &fleet.bed.runner(),
        &job().timeout(Duration::from_secs(7200)),
    );
    out.assert_build_failure(1)
        .assert_log_contains("--orchard-max-vm-age (3600s)")
        .assert_log_contains("timeout (7200s)");
    assert_eq!(out.prepare_attempts, 1, "{:?}", out.call_sequence());
    assert_eq!(
        fleet.sim.port_forwards_served(),
        0,
        "no VM was made for the job"
    );
    fleet.assert_nothing_left();
}

#[test]
fn a_job_asking_for_pull_policy_never_is_refused_before_any_vm_exists() {
    let fleet = Fleet::start(|_| {});
    let out = run_job(&fleet.bed.runner(), &job().var("TART_PULL_POLICY", "never"));
    out.assert_build_failure(1)
        .assert_log_contains("TART_PULL_POLICY=never cannot be honoured on Orchard");
    assert_eq!(out.prepare_attempts, 1, "{:?}", out.call_sequence());
    assert_eq!(fleet.sim.port_forwards_served(), 0, "no VM was made");
    fleet.assert_nothing_left();
}

#[test]
fn a_cleanup_the_controller_refuses_gives_up_once_for_all_of_the_jobs_vms() {
    let fleet = Fleet::start(|_| {});
    let job = fleet.bed.direct_job(MACOS);
    let (code, log) = fleet.bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let first = fleet.sim.vms()[0].name.clone();
    let stem = first.rsplit_once('-').unwrap().0.to_string();
    // Earlier attempts of the job whose deletes never got through: the record names only
    // the latest, cleanup finds these by name.
    for attempt in [7, 8] {
        let vm = orchard_sim::Vm {
            name: format!("{stem}-{attempt}"),
            image: MACOS.into(),
            ..orchard_sim::Vm::default()
        };
        fleet.sim.create_vm(vm).unwrap();
    }
    // The controller's store fails every delete.
    fleet.sim.faults(|f| f.delete_fails_with = Some(500));
    let started = Instant::now();
    let (_, log) = fleet.bed.stage(&job, &["cleanup"]);
    let took = started.elapsed();
    assert!(log.contains("cannot delete Orchard VM"), "{log}");
    assert!(
        took < Duration::from_secs(120),
        "one 60 s bound for the job's three deletes, not 60 s each: {took:?}"
    );
    fleet.sim.faults(|f| f.delete_fails_with = None);
    // They carry this runner's name and no job holds them: gc takes them.
    let text = fleet.gc(&["--orchard-max-vm-age", "1"]);
    assert!(text.contains(&first), "{text}");
    fleet.assert_nothing_left();
}

#[test]
fn a_default_jobs_vm_asks_for_softnet_and_its_worker_runs_it_behind_softnet() {
    // The defaults: one job at a time, no warm pool. The worker's Mac still runs whatever
    // else the controller places there.
    let fleet = Fleet::start(|_| {});
    let mut seen = Vec::new();
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| run_job(&fleet.bed.runner(), &job().script(["true"])));
        while !job.is_finished() {
            seen.extend(fleet.sim.vms());
            std::thread::sleep(Duration::from_millis(100));
        }
        job.join().unwrap()
    });
    out.assert_success();
    assert!(!seen.is_empty(), "the job's VM was never seen");
    for vm in &seen {
        assert!(
            vm.net_softnet && vm.net_softnet_deprecated,
            "VM {} without Softnet",
            vm.name
        );
    }
    let runs = fleet.sim.tart_runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].contains(&"--net-softnet".to_string()), "{runs:?}");
    fleet.assert_nothing_left();
}

#[test]
fn the_admin_can_turn_softnet_off_on_the_fleet() {
    let fleet = Fleet::with_options(|_| {}, &["--no-softnet"]);
    run_job(&fleet.bed.runner(), &job().script(["true"])).assert_success();
    let runs = fleet.sim.tart_runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(!runs[0].iter().any(|a| a.contains("softnet")), "{runs:?}");
    fleet.assert_nothing_left();
}

/// Another project's image, which the worker's Mac holds (its `tart login` reached it).
const PRIVATE: &str = "ghcr.io/project-a/private-xcode:16";

#[test]
fn an_image_not_declared_public_is_refused_before_any_vm_exists() {
    let fleet = Fleet::on(
        Bed::new().image(PRIVATE, Image::darwin().agent(true)),
        |_| {},
        &[],
    );
    let out = run_job(&fleet.bed.runner(), &Job::new().image(PRIVATE));
    out.assert_build_failure(1)
        .assert_log_contains(&format!("image `{PRIVATE}` is not declared public"))
        .assert_log_contains("--public-image");
    assert_eq!(out.prepare_attempts, 1, "{:?}", out.call_sequence());
    assert_eq!(fleet.sim.tart_runs(), Vec::<Vec<String>>::new(), "a VM ran");
    fleet.assert_nothing_left();
}

#[test]
fn a_jobs_own_registry_credentials_do_not_open_an_image_on_the_fleet() {
    let fleet = Fleet::on(
        Bed::new().image(PRIVATE, Image::darwin().agent(true)),
        |_| {},
        &[],
    );
    let job = Job::new()
        .image(PRIVATE)
        .var("TART_REGISTRY_USERNAME", "project-b")
        .var("TART_REGISTRY_PASSWORD", "pw-of-project-b");
    let out = run_job(&fleet.bed.runner(), &job);
    out.assert_build_failure(1)
        .assert_log_contains("TART_REGISTRY_* cannot be passed to a worker");
    assert_eq!(fleet.sim.tart_runs(), Vec::<Vec<String>>::new(), "a VM ran");
    fleet.assert_nothing_left();
}

#[test]
fn an_image_the_admin_declares_public_runs_on_the_fleet() {
    let fleet = Fleet::on(
        Bed::new().image(PRIVATE, Image::darwin().agent(true)),
        |_| {},
        &["--public-image", r"^ghcr\.io/project-a/private-xcode:16$"],
    );
    run_job(
        &fleet.bed.runner(),
        &Job::new().image(PRIVATE).script(["true"]),
    )
    .assert_success();
    fleet.assert_nothing_left();
}
