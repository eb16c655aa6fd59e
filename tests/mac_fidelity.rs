//! What a real, multi-user Mac does that a quiet test host would not: Tart's housekeeping
//! warnings, `--nested` rules, the guest user's login environment, macOS VMs of other users
//! filling Apple's limit, and other users' VMs answering for this job's MAC address. Each
//! test drives whole jobs against the simulator made as strict as a Mac.

mod common;

use std::time::{Duration, Instant};

use common::Bed;
use harness::sim::Image;
use harness::{run_job, Job, JobOutcome, Verdict};

const IMAGE: &str = "ghcr.io/acme/mac-fidelity:latest";

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

// --- Tart's housekeeping warning (point 1) ---------------------------------------------------

#[test]
fn cleanup_reads_tarts_message_after_a_garbage_collection_warning() {
    // Another Tart process collected an entry of $TART_HOME/tmp first: every command but
    // pull and clone starts its stderr with Tart's warning.
    let bed = Bed::new();
    let job = bed.direct_job(common::MACOS);
    let mut cmd = bed.stage_command(&job, &["cleanup"]);
    let out = cmd
        .env("TART_SIM_GC_WARNING", "1")
        .output()
        .expect("cleanup");
    // Nothing to clean: Tart says "does not exist", which is fine, under its warning.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.assert_nothing_left();
}

#[test]
fn a_vm_without_ip_is_reported_as_such_after_a_garbage_collection_warning() {
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().never_ip())
        .option(["--timeout", "2"]);
    let started = Instant::now();
    let out = run_job(
        &bed.runner().env("TART_SIM_GC_WARNING", "1"),
        &Job::new().image(IMAGE).script(["true"]),
    );
    assert_system_failure(&out, "no IP address within the boot timeout");
    assert!(
        !out.log.contains("garbage collection"),
        "Tart's housekeeping warning was taken for its message:\n{}",
        out.log
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- Other users' VMs answering for this job's MAC (point 5) --------------------------------

/// One image, as two users of the same Mac pull it: the same digest, so the same MAC.
const SHARED_DIGEST: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

/// Another user of the bed's Mac, running a clone of IMAGE (the same MAC as the job's first
/// clone) that holds the MAC's DHCP lease.
struct ForeignVm {
    host: harness::sim::SimHost,
    run: std::process::Child,
    /// The guest's private /tmp.
    tmp: std::path::PathBuf,
}

impl ForeignVm {
    fn start(bed: &Bed, image: Image) -> ForeignVm {
        let mut host = bed.sim.another_user();
        host.add_image(IMAGE, image.digest(SHARED_DIGEST));
        host.tart_ok(["clone", IMAGE, "someone-elses-vm"]);
        let run = host
            .command(["run", "someone-elses-vm", "--no-graphics"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tart run");
        assert!(
            common::wait_until(Duration::from_secs(20), || host
                .tart(["ip", "someone-elses-vm"])
                .status
                .success()),
            "the other user's VM got no lease"
        );
        let tmp = host.tart_home().join("vms/someone-elses-vm/guest/tmp");
        ForeignVm { host, run, tmp }
    }

    #[track_caller]
    fn assert_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(&self.tmp)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            entries.is_empty(),
            "the other user's VM received the job (its /tmp holds {entries:?})"
        );
    }
}

impl Drop for ForeignVm {
    fn drop(&mut self) {
        self.host.stop_and_delete_all();
        let _ = self.run.wait();
    }
}

/// A job whose script would leave its token and a marker in whatever guest runs it.
fn leaky_job() -> Job {
    Job::new().image(IMAGE).script([
        "echo \"$CI_JOB_TOKEN\" > /tmp/job-token",
        "touch /tmp/job-was-here",
    ])
}

/// The bed's runner, but the driver sees an empty leases file: as when the other user's VM
/// took its lease after the driver looked (between the clone and `tart run`), so the clone
/// keeps the shared MAC and only the identity proof stands between the job and that VM.
fn runner_blind_to_leases(bed: &Bed) -> harness::Runner {
    let elsewhere = bed.sim.root().join("a-mac-without-leases");
    bed.runner()
        .env("TART_DRIVER_HOST_ROOT", elsewhere.display().to_string())
}

#[test]
fn a_clone_whose_mac_another_users_vm_holds_gets_a_new_mac_and_runs_in_its_own_vm() {
    // The job's clone keeps the image's MAC (no VM of its TART_HOME has it), which the other
    // user's running clone holds a lease for: bootpd would give both the same address.
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().digest(SHARED_DIGEST))
        .option(["--transport", "ssh"]);
    let foreign = ForeignVm::start(&bed, Image::darwin());
    let foreign_ip = foreign.host.tart_ok(["ip", "someone-elses-vm"]);
    let out = run_job(&bed.runner(), &leaky_job());
    out.assert_success()
        .assert_log_contains("giving the clone a new MAC address");
    assert_eq!(out.prepare_attempts, 1, "{}", out.log);
    foreign.assert_untouched();
    assert_eq!(
        foreign.host.tart_ok(["ip", "someone-elses-vm"]),
        foreign_ip,
        "the other user's VM lost its address"
    );
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn a_runners_next_clone_reuses_its_own_earlier_lease_without_a_new_mac() {
    // One runner, one image, one job after another: the clone keeps the image's MAC and the
    // lease the previous job's VM took, so the DHCP pool does not grow by a lease per job.
    let bed = Bed::new()
        .image(IMAGE, Image::linux())
        .option(["--transport", "ssh"]);
    for _ in 0..2 {
        let out = run_job(&bed.runner(), &Job::new().image(IMAGE).script(["true"]));
        out.assert_success();
        assert!(
            !out.log.contains("giving the clone a new MAC address"),
            "{}",
            out.log
        );
    }
    let leases = std::fs::read_to_string(bed.sim.sim_host_dir().join("var/db/dhcpd_leases"))
        .unwrap_or_default();
    assert_eq!(leases.matches("ip_address=").count(), 1, "{leases}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn a_stale_lease_of_another_users_vm_never_receives_the_job() {
    // The job's own VM never gets a lease of its own: `tart ip` answers with the other
    // user's lease for the same MAC, and the login there succeeds (same image, same password).
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().digest(SHARED_DIGEST).never_ip())
        .option(["--transport", "ssh", "--timeout", "20"]);
    let foreign = ForeignVm::start(&bed, Image::darwin());
    let out = run_job(&runner_blind_to_leases(&bed), &leaky_job());
    assert_system_failure(&out, "is not this job's VM");
    out.assert_log_contains("--random-mac");
    foreign.assert_untouched();
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn a_failed_tart_run_never_sends_the_job_to_the_vm_its_stale_lease_names() {
    // Virtualization fails the start only after the driver found the other VM's lease and
    // logged in there: the identity proof, not the timing, refuses it.
    let bed = Bed::new()
        .image(
            IMAGE,
            Image::linux()
                .digest(SHARED_DIGEST)
                .run_dies(None)
                .faults(|f| f.run_dies_after_ms = Some(60_000)),
        )
        .option(["--transport", "ssh"]);
    let foreign = ForeignVm::start(&bed, Image::linux());
    let out = run_job(&runner_blind_to_leases(&bed), &leaky_job());
    assert_system_failure(&out, "is not this job's VM");
    foreign.assert_untouched();
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn with_random_macs_a_job_runs_in_its_own_vm_next_to_another_users_clone() {
    // The fix the refusal names: the job's clone gets a MAC of its own, and the identity
    // proof passes through a Linux guest's virtiofs mount.
    let bed = Bed::new()
        .image(IMAGE, Image::linux().digest(SHARED_DIGEST))
        .option(["--transport", "ssh", "--random-mac"]);
    let foreign = ForeignVm::start(&bed, Image::linux());
    let out = run_job(&bed.runner(), &leaky_job());
    out.assert_success();
    assert_eq!(out.prepare_attempts, 1);
    foreign.assert_untouched();
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- Nested virtualization (point 2) ---------------------------------------------------------

#[test]
fn nested_virtualization_is_ignored_for_a_macos_guest_and_the_log_says_why() {
    let bed = Bed::new().image(IMAGE, Image::darwin());
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(IMAGE)
            .var("TART_EXECUTOR_NESTED", "true")
            .script(["echo ran-without-nested"]),
    );
    out.assert_success()
        .assert_log_contains("ran-without-nested")
        .assert_log_contains("Nested virtualization (--nested, TART_EXECUTOR_NESTED) ignored");
    bed.assert_nothing_left();
}

#[test]
fn nested_virtualization_on_a_mac_before_the_m3_fails_with_tarts_reason() {
    let bed = Bed::new().image(IMAGE, Image::linux());
    bed.sim.set_hardware(15, 2);
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(IMAGE)
            .var("TART_EXECUTOR_NESTED", "true")
            .script(["true"]),
    );
    assert_system_failure(
        &out,
        "Nested virtualization is available for Mac with the M3 chip, and later.",
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    bed.assert_nothing_left();
}

// --- macOS VMs this driver did not start (point 4) -------------------------------------------

/// A developer on the same Mac, in a TART_HOME of their own, running two macOS VMs: Apple's
/// limit is full. Dropping it stops them.
struct Developer {
    host: harness::sim::SimHost,
    runs: Vec<std::process::Child>,
}

impl Developer {
    fn fills_the_limit(bed: &Bed) -> Developer {
        Developer::running(bed, &["dev-1", "dev-2"])
    }

    fn running(bed: &Bed, names: &[&str]) -> Developer {
        let host = bed.sim.another_user();
        let mut runs = Vec::new();
        for &name in names {
            host.tart_ok(["clone", common::MACOS_VANILLA, name]);
            runs.push(
                host.command(["run", name, "--no-graphics"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("tart run"),
            );
        }
        assert!(
            common::wait_until(Duration::from_secs(20), || host.running_count()
                == names.len()),
            "the developer's VMs did not start"
        );
        Developer { host, runs }
    }
}

impl Drop for Developer {
    fn drop(&mut self) {
        self.host.stop_and_delete_all();
        for run in &mut self.runs {
            let _ = run.wait();
        }
    }
}

#[test]
fn a_job_waits_while_another_users_macos_vms_fill_apples_limit_then_runs() {
    let bed = Bed::new().image(IMAGE, Image::darwin());
    let developer = Developer::fills_the_limit(&bed);
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| run_job(&bed.runner(), &Job::new().image(IMAGE).script(["echo ran"])));
        std::thread::sleep(Duration::from_secs(5));
        developer.host.tart_ok(["stop", "dev-1"]);
        job.join().expect("job thread")
    });
    out.assert_success()
        .assert_log_contains("ran")
        .assert_log_contains("macOS VMs not started by this driver");
    assert_eq!(out.prepare_attempts, 1, "{}", out.log);
    drop(developer);
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn a_job_gives_up_waiting_for_a_full_limit_before_its_timeout_and_says_why() {
    let bed = Bed::new().image(IMAGE, Image::darwin());
    let developer = Developer::fills_the_limit(&bed);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(IMAGE)
            .timeout(Duration::from_secs(30))
            .script(["echo ran"]),
    );
    // Said in the job log before gitlab-runner ends the job at its timeout (its retry of
    // prepare then waits until the timeout).
    assert!(
        matches!(
            out.verdict,
            Verdict::SystemFailure { .. } | Verdict::TimedOut
        ),
        "verdict {:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("ERROR: prepare failed: macOS VMs not started by this driver kept Apple's two-VM limit full");
    assert!(!out.log.contains("\nran"), "{}", out.log);
    drop(developer);
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// When the job's `tart run` calls ended, in ms since the epoch (refusals at the limit).
fn job_run_ends(bed: &Bed) -> Vec<u128> {
    bed.sim
        .invocations()
        .iter()
        .filter(|i| i.args.first().is_some_and(|a| a == "run"))
        .filter(|i| i.args.iter().any(|a| a.starts_with("tartdrv-")))
        .filter_map(|i| i.ended_ms)
        .collect()
}

#[test]
fn a_macos_job_refused_at_the_limit_with_no_vm_running_fails_after_three_refusals_over_ten_seconds_naming_the_stale_slot_bug(
) {
    // macOS 26 kept both places of VMs that shut themselves down: nothing runs, yet every
    // start fails at the limit until the Mac reboots. Waiting would take the job's timeout;
    // a VM that was just leaving would have left within ten seconds.
    let bed = Bed::new().image(IMAGE, Image::darwin());
    bed.sim.leave_stale_macos_slots(2);
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(IMAGE)
            .timeout(Duration::from_secs(120))
            .script(["echo ran"]),
    );
    assert_system_failure(&out, "stale-slot bug");
    out.assert_log_contains("reboot the Mac");
    let refusals = job_run_ends(&bed);
    assert!(
        refusals.len() >= 3,
        "gave up after {refusals:?}\n{}",
        out.log
    );
    let span = refusals[refusals.len() - 1] - refusals[0];
    assert!(
        span >= 10_000,
        "gave up {span} ms after the first refusal\n{}",
        out.log
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited {:?} for a limit nothing fills",
        started.elapsed()
    );
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

#[test]
fn fewer_vm_processes_than_vms_of_the_runners_own_tart_home_are_not_taken_for_the_stale_slot_bug() {
    // The Mac's process listing misses Virtualization's VM processes: it shows none while
    // two macOS VMs fill the limit, one in the runner's own Tart home (an admin's), one a
    // developer's. A count below the VMs the runner's Tart runs proves nothing: the job
    // waits for the limit, and runs once the developer's VM leaves.
    let bed = Bed::new().image(IMAGE, Image::darwin());
    bed.sim.hide_vm_processes();
    bed.sim
        .tart_ok(["clone", common::MACOS_VANILLA, "admin-vm"]);
    let mut admin = bed
        .sim
        .command(["run", "admin-vm", "--no-graphics"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tart run");
    assert!(
        common::wait_until(Duration::from_secs(20), || bed.sim.running_count() == 1),
        "the admin's VM did not start"
    );
    let developer = Developer::running(&bed, &["dev-1"]);
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| {
            run_job(
                &bed.runner(),
                &Job::new()
                    .image(IMAGE)
                    .timeout(Duration::from_secs(180))
                    .script(["echo ran"]),
            )
        });
        // Past what the stale-slot diagnosis needs: three refusals over ten seconds.
        common::wait_until(Duration::from_secs(90), || {
            let ends = job_run_ends(&bed);
            ends.len() >= 4 && ends[ends.len() - 1] - ends[0] >= 12_000
        });
        developer.host.tart_ok(["stop", "dev-1"]);
        job.join().expect("job thread")
    });
    out.assert_success().assert_log_contains("ran");
    assert!(!out.log.contains("stale-slot"), "{}", out.log);
    assert_eq!(out.prepare_attempts, 1, "{}", out.log);
    assert!(job_run_ends(&bed).len() >= 4, "{}", out.log);
    bed.sim.tart_ok(["stop", "admin-vm"]);
    let _ = admin.wait();
    bed.sim.tart_ok(["delete", "admin-vm"]);
    drop(developer);
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

// --- The guest user's login environment (point 3) --------------------------------------------

/// A script that shows which gitlab-runner and PATH the job sees.
fn login_env_job() -> Job {
    Job::new().image(IMAGE).script([
        "echo \"runner at $(command -v gitlab-runner)\"",
        "echo \"PATH=$PATH\"",
        "echo \"HOMEBREW_PREFIX is ${HOMEBREW_PREFIX:-unset}\"",
    ])
}

#[test]
fn a_macos_job_over_ssh_sees_homebrew_from_the_users_zprofile() {
    // zsh is the login shell; Homebrew's PATH is only in ~/.zprofile; sshd's PATH has no
    // /opt/homebrew/bin.
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().homebrew())
        .option(["--transport", "ssh"]);
    let out = run_job(&bed.runner(), &login_env_job());
    out.assert_success()
        .assert_log_contains("runner at /opt/homebrew/bin/gitlab-runner")
        // path_helper of /etc/zprofile ran too.
        .assert_log_contains("/usr/local/bin");
    assert!(
        !out.log.contains("no gitlab-runner in the VM"),
        "guest setup ran without the login environment:\n{}",
        out.log
    );
    bed.assert_nothing_left();
}

#[test]
fn a_macos_job_over_tart_exec_gets_the_same_login_environment() {
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().homebrew().agent(true))
        .option(["--transport", "exec"]);
    let out = run_job(&bed.runner(), &login_env_job());
    out.assert_success()
        .assert_log_contains("runner at /opt/homebrew/bin/gitlab-runner")
        .assert_log_contains("HOMEBREW_PREFIX is /opt/homebrew");
    bed.assert_nothing_left();
}

#[test]
fn doctor_names_the_vms_another_user_runs_on_the_mac() {
    let bed = Bed::new();
    let developer = bed.sim.another_user();
    developer.tart_ok(["clone", common::MACOS_VANILLA, "developers-vm"]);
    let mut run = developer
        .command(["run", "developers-vm", "--no-graphics"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tart run");
    assert!(common::wait_until(Duration::from_secs(20), || {
        developer.running_count() == 1
    }));
    let check = bed.doctor_check("VMs not started by this driver");
    assert_eq!(check["status"], "warn", "{check:#}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("`tart run developers-vm`"),
        "{check:#}"
    );
    developer.stop_and_delete_all();
    let _ = run.wait();
}
