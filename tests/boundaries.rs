//! Trust boundaries between jobs sharing a host: a job's image cannot take more of the host
//! than each VM's share, a job without credentials cannot use another project's private
//! image or the runner user's registry logins, a job's guest cannot reach a neighbouring
//! job's VM, and a cancel ends a stage's remote processes whatever the script did with its
//! output. Every wait has a bound.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{kill_group, Bed, LINUX, MACOS};
use harness::sim::{Image, Softnet};
use harness::{run_job, Job, Verdict};

const GREEDY: &str = "ghcr.io/hostile/greedy:latest";

#[test]
fn an_image_whose_minimum_exceeds_the_per_vm_share_fails_the_job_instead_of_taking_the_host() {
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

/// This host's memory as the driver sizes VMs: all of it but the 2 GiB kept for the host.
fn usable_host_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib / 1024 - 2048
}

/// Apple runs at most two macOS guests, so at `--concurrency 3` a macOS VM shares the host
/// with one other macOS VM, not two: a macOS image needing more than a third of the host
/// (a Cirrus image on a 12 GB Mac) still runs.
#[test]
fn at_concurrency_3_a_macos_vm_gets_half_the_host_as_only_two_macos_vms_can_run() {
    const BIG_MAC: &str = "ghcr.io/cirruslabs/macos-big:latest";
    let usable = usable_host_mib();
    let needs = (usable / 2 + usable / 3) / 2;
    let bed = Bed::new()
        .option(["--concurrency", "3", "--cpu", "2"])
        .image(BIG_MAC, Image::darwin().minimum(2, needs));
    let out = run_job(
        &bed.runner(),
        &Job::new().image(BIG_MAC).script(["echo ran"]),
    );
    out.assert_success().assert_log_contains("ran");
    bed.assert_nothing_left();
}

/// The image would fit this host, but not the share each VM gets at `--concurrency 2`: the
/// job chose an image this runner cannot run, which a retry by gitlab-runner cannot fix,
/// so a build failure naming the image, its minimum and the share (and the admin's knob).
#[test]
fn an_image_whose_minimum_is_above_the_per_vm_share_is_a_build_failure_naming_it_and_the_share() {
    const WIDE: &str = "ghcr.io/team/wide:latest";
    let usable = usable_host_mib();
    let needs = (usable + usable / 2) / 2;
    let bed = Bed::new()
        .option(["--concurrency", "2"])
        .image(WIDE, Image::linux().minimum(1, needs));
    let out = run_job(&bed.runner(), &Job::new().image(WIDE).script(["echo RAN"]));
    assert!(
        matches!(out.verdict, Verdict::BuildFailure { .. }),
        "{:?}: {}",
        out.verdict,
        out.log
    );
    out.assert_log_contains(&format!(
        "image `{WIDE}`: the image needs at least {needs} MiB of memory"
    ))
    .assert_log_contains("MiB each VM gets here")
    .assert_log_contains("shared by the 2 VMs --concurrency runs at once")
    .assert_log_contains("lower --concurrency");
    assert!(!out.log.lines().any(|l| l.trim() == "RAN"), "{}", out.log);
    bed.assert_nothing_left();
}

/// Under launchd HOME can point anywhere; Tart finds its home through Foundation
/// (`CFFIXED_USER_HOME`, else the user database), and so must the driver, or it reads no
/// image minimum at all and lets the greedy image take the host.
#[test]
fn without_tart_home_the_image_minimum_is_read_where_tart_keeps_the_vm_not_under_home() {
    greedy_image_refused_in_tarts_default_home(None);
}

/// `TART_HOME=` with no value (a launchd plist's empty string) is no TART_HOME for the
/// driver, and Tart must agree: Tart takes it as its working directory, where the driver
/// would read no image minimum.
#[test]
fn an_empty_tart_home_is_tarts_default_home_for_the_driver_and_for_tart() {
    greedy_image_refused_in_tarts_default_home(Some(""));
}

/// Prepare of the greedy image with `TART_HOME` unset (None) or set to `tart_home`, Tart's
/// default home in Foundation's home: refused for its minimum, Tart's VM where the driver
/// looked.
fn greedy_image_refused_in_tarts_default_home(tart_home: Option<&str>) {
    let bed = Bed::new().image(GREEDY, Image::linux().minimum(4096, 4 << 20));
    // Foundation's home holds Tart's default home (the simulator's TART_HOME).
    std::os::unix::fs::symlink(bed.sim.tart_home(), bed.sim.home_dir().join(".tart")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let job = bed.direct_job(GREEDY);
    let mut prepare = bed.stage_command(&job, &["prepare"]);
    match tart_home {
        None => prepare.env_remove("TART_HOME"),
        Some(value) => prepare.env("TART_HOME", value),
    };
    let out = prepare
        .env("CFFIXED_USER_HOME", bed.sim.home_dir())
        .env("HOME", elsewhere.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("needs at least 4096 CPUs"), "{log}");
    assert!(
        !job.dir.path().join("vms").exists(),
        "Tart's home was the working directory"
    );
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

// --- Cancel and bounds --------------------------------------------------------------------

/// `exec >log 2>&1` closes the stage's output long before the script ends: the cancel must
/// still stop the script in the guest, and the stage must end within seconds, not at the
/// runner's SIGKILL.
#[test]
fn a_cancel_after_the_script_closed_its_output_stops_the_remote_script_within_seconds() {
    cancel_after_the_script_closed_its_output(Bed::new());
}

/// The same over `tart exec`, whose process runs under its lifeline's wrapper.
#[test]
fn over_tart_exec_a_cancel_after_the_script_closed_its_output_stops_it_within_seconds() {
    cancel_after_the_script_closed_its_output(Bed::new().option(["--transport", "exec"]));
}

fn cancel_after_the_script_closed_its_output(bed: Bed) {
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

/// `tart exec` runs outside the stage's process group, where gitlab-runner's SIGKILL does
/// not reach it. It must die with the driver anyway, by a mechanism macOS has too (no
/// parent-death signal): no `tart exec` of the job, nor its lifeline, outlives the stage.
#[test]
fn a_sigkilled_exec_stage_leaves_no_tart_exec_running() {
    let bed = Bed::new().option(["--transport", "exec"]);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let script = job.dir.path().join("script-build");
    std::fs::write(&script, "echo started; sleep 60; echo finished\n").unwrap();
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
    let vm = job.vm_name();
    assert!(!common::pids_with_args(&["exec", "-i", &vm]).is_empty());
    kill_group(stage.id(), libc::SIGKILL);
    let _ = stage.wait();
    assert!(
        common::wait_until(Duration::from_secs(5), || common::pids_with_args(&[
            "exec", "-i", &vm
        ])
        .is_empty()),
        "`tart exec` outlived the SIGKILLed stage: {:?}",
        common::pids_with_args(&["exec", "-i", &vm])
    );
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The wall clock jumps (NTP after a dead RTC, an admin): a live job's VM must not look
/// like one gitlab-runner forgot, so `gc` with the clock two years ahead leaves it alone.
#[test]
fn a_wall_clock_jump_does_not_make_gc_sweep_a_live_jobs_vm() {
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

// --- Private images -----------------------------------------------------------------------

const PRIVATE: &str = "registry.example.com/team/secret-sauce:1";
const ROBOT: (&str, &str) = ("robot", "pa55-w0rd-xyz");

fn private_bed() -> Bed {
    Bed::new().image(PRIVATE, Image::linux().registry_auth(ROBOT.0, ROBOT.1))
}

fn with_credentials(job: Job, user: &str, password: &str) -> Job {
    job.var("TART_REGISTRY_USERNAME", user)
        .masked_var("TART_REGISTRY_PASSWORD", password)
}

/// Project A pulls its private image with its credentials; project B names the same image
/// without any, and must not get a VM from A's download (pull policy `if-not-present`).
#[test]
fn a_private_image_pulled_by_one_project_is_not_cloned_by_another_without_credentials() {
    let bed = private_bed();
    let a = with_credentials(Job::new().project("a/app"), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(PRIVATE).script(["echo A-ran"]))
        .assert_success()
        .assert_log_contains("A-ran");
    let b = Job::new()
        .project("b/other")
        .image(PRIVATE)
        .script(["echo B-RAN"]);
    let out = run_job(&bed.runner(), &b);
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("its registry serves it only with credentials, and this job has none");
    assert!(!out.log.lines().any(|l| l.trim() == "B-RAN"), "{}", out.log);
    // By digest, the same image is refused too.
    let digest = bed.sim.tart_ok(["fqn", PRIVATE]).trim().to_string();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(&digest).script(["echo B-RAN"]),
    );
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    bed.assert_nothing_left();
}

/// A later job with credentials the registry accepts clones the cached image; one whose
/// credentials the registry refuses does not.
#[test]
fn a_cached_private_image_is_cloned_only_after_the_registry_accepts_the_jobs_credentials() {
    let bed = private_bed();
    let job = |user: &str, password: &str| {
        with_credentials(Job::new(), user, password)
            .image(PRIVATE)
            .script(["echo ran"])
    };
    run_job(&bed.runner(), &job(ROBOT.0, ROBOT.1)).assert_success();
    run_job(&bed.runner(), &job(ROBOT.0, ROBOT.1)).assert_success();
    let out = run_job(&bed.runner(), &job(ROBOT.0, "guessed"));
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("did not accept this job's credentials");
    assert!(!out.log.contains("guessed"), "the password reached the log");
    bed.assert_nothing_left();
}

/// The admin may declare an image public: then any job clones it from the cache.
#[test]
fn an_image_the_admin_marks_public_is_cloned_without_credentials() {
    let bed = private_bed().option(["--public-image", r"registry\.example\.com/team/.*"]);
    let a = with_credentials(Job::new(), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(PRIVATE).script(["true"])).assert_success();
    run_job(
        &bed.runner(),
        &Job::new().image(PRIVATE).script(["echo B-ran"]),
    )
    .assert_success()
    .assert_log_contains("B-ran");
    bed.assert_nothing_left();
}

/// What the simulated Tart was asked to do since the `since`-th command of the test.
fn tart_commands_since(bed: &Bed, since: usize) -> Vec<Vec<String>> {
    bed.sim.invocations()[since..]
        .iter()
        .map(|i| i.args.clone())
        .collect()
}

/// An image its registry served to a job without credentials is public: later jobs clone
/// it from the cache without asking the registry, so its outage (or rate limit) neither
/// fails nor slows them.
#[test]
fn a_cached_public_image_is_cloned_without_asking_its_registry_so_an_outage_fails_no_job() {
    const PUBLIC: &str = "registry.example.com/team/open-tools:1";
    let bed = Bed::new().image(PUBLIC, Image::linux());
    run_job(&bed.runner(), &Job::new().image(PUBLIC).script(["true"])).assert_success();
    bed.sim.cut_registry("registry.example.com", false);
    let since = bed.sim.invocations().len();
    let job = Job::new()
        .project("b/other")
        .image(PUBLIC)
        .script(["echo B-ran"]);
    run_job(&bed.runner(), &job)
        .assert_success()
        .assert_log_contains("B-ran");
    let pulls: Vec<_> = tart_commands_since(&bed, since)
        .into_iter()
        .filter(|args| args.first().is_some_and(|a| a == "pull"))
        .collect();
    assert!(pulls.is_empty(), "the registry was asked: {pulls:?}");
    bed.assert_nothing_left();
}

/// The registry still decides, per job, for a cached image that was pulled with
/// credentials: a job without any is refused after a `tart pull` by digest, and its clone
/// never starts.
#[test]
fn a_cached_private_image_is_vetted_for_every_job_and_refused_without_credentials_before_any_vm_starts(
) {
    let bed = private_bed();
    let a = with_credentials(Job::new(), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(PRIVATE).script(["true"])).assert_success();
    let since = bed.sim.invocations().len();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .project("b/other")
            .image(PRIVATE)
            .script(["echo B-RAN"]),
    );
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("its registry serves it only with credentials, and this job has none");
    let commands = tart_commands_since(&bed, since);
    let asked = |args: &Vec<String>| {
        args.first().is_some_and(|a| a == "pull")
            && args.last().is_some_and(|a| a.contains("@sha256:"))
    };
    assert!(
        commands.iter().any(asked),
        "no check by digest: {commands:?}"
    );
    let runs: Vec<_> = commands
        .iter()
        .filter(|args| args.first().is_some_and(|a| a == "run"))
        .collect();
    assert!(runs.is_empty(), "a VM started for a refused job: {runs:?}");
    bed.assert_nothing_left();
}

/// Tart's cache links a tag to a digest, and any pull re-points the link. A job approved
/// for one digest (public, or vetted) gets a VM of that digest even when the tag moves
/// before its clone, here to a private digest of the same repository that another job
/// pulled with credentials.
#[test]
fn a_tag_re_pointed_after_the_registry_check_does_not_change_the_digest_the_job_boots() {
    const OPEN: &str = "registry.example.com/team/tools:1";
    const CLOSED: &str = "registry.example.com/team/tools:2";
    let closed_digest = "c1".repeat(32);
    let bed = Bed::new().image(OPEN, Image::linux()).image(
        CLOSED,
        Image::linux()
            .digest(closed_digest.clone())
            .registry_auth(ROBOT.0, ROBOT.1),
    );
    run_job(&bed.runner(), &Job::new().image(OPEN).script(["true"])).assert_success();
    let a = with_credentials(Job::new().project("a/app"), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(CLOSED).script(["true"])).assert_success();
    let repo = bed
        .sim
        .tart_home()
        .join("cache/OCIs/registry.example.com/team/tools");
    let approved = std::fs::read_link(repo.join("1")).expect("tag 1 is cached");
    let approved = approved.to_str().unwrap().to_string();
    assert_ne!(approved, format!("sha256:{closed_digest}"));

    let paused = common::warm::FaultPoint::new("prepare:image-approved");
    let job = bed.direct_job(OPEN);
    let since = bed.sim.invocations().len();
    let prepare = bed
        .stage_command(&job, &["prepare"])
        .envs(paused.pause())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        paused.reached_within(Duration::from_secs(120)),
        "prepare never approved the image"
    );
    // What another job's pull of the moved tag leaves in the cache.
    std::fs::remove_file(repo.join("1")).unwrap();
    std::os::unix::fs::symlink(format!("sha256:{closed_digest}"), repo.join("1")).unwrap();
    paused.release();
    let (ok, log) = common::warm::finish_within(prepare, Duration::from_secs(300), "prepare");
    let (code, cleanup) = bed.stage(&job, &["cleanup"]);
    assert!(ok, "{log}");
    assert_eq!(code, 0, "{cleanup}");
    let clones: Vec<_> = tart_commands_since(&bed, since)
        .into_iter()
        .filter(|args| args.first().is_some_and(|a| a == "clone"))
        .collect();
    let wanted = format!("registry.example.com/team/tools@{approved}");
    assert!(
        !clones.is_empty() && clones.iter().all(|args| args.contains(&wanted)),
        "the job's VM was not cloned from the digest it was approved for ({wanted}): {clones:?}"
    );
    bed.assert_nothing_left();
}

/// A registry that cannot be reached while it vets a cached image pulled with credentials
/// is no answer: the job fails as a system failure that says so, and no VM is left.
#[test]
fn a_registry_outage_while_vetting_a_cached_private_image_fails_the_job_and_leaves_no_vm() {
    let bed = private_bed();
    let a = with_credentials(Job::new().project("a/app"), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(PRIVATE).script(["true"])).assert_success();
    bed.sim.cut_registry("registry.example.com", false);
    let b = with_credentials(Job::new().project("b/other"), ROBOT.0, ROBOT.1);
    let out = run_job(&bed.runner(), &b.image(PRIVATE).script(["echo B-RAN"]));
    out.assert_system_failure().assert_log_contains(
        "cannot confirm with registry.example.com that this job may use the cached image",
    );
    assert!(!out.log.contains("B-RAN"), "{}", out.log);
    bed.assert_nothing_left();
}

fn docker_login(bed: &Bed) {
    let auth = harness_base64(&format!("{}:{}", ROBOT.0, ROBOT.1));
    let dir = bed.sim.home_dir().join(".docker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths": {{"registry.example.com": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
}

fn keychain_login(bed: &Bed) {
    use std::io::Write;
    let mut login = bed
        .sim
        .command([
            "login",
            "registry.example.com",
            "--username",
            ROBOT.0,
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(ROBOT.1.as_bytes())
        .unwrap();
    assert!(login.wait().unwrap().success());
}

fn harness_base64(text: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An image the admin pulled by hand (or that was cached before this driver kept any
/// record) is no more public than one a job pulled with credentials: the registry decides.
#[test]
fn an_image_cached_before_any_job_pulled_it_is_cloned_only_with_credentials_the_registry_accepts() {
    let bed = private_bed();
    let pulled = bed
        .sim
        .command(["pull", PRIVATE])
        .env("TART_REGISTRY_USERNAME", ROBOT.0)
        .env("TART_REGISTRY_PASSWORD", ROBOT.1)
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    let out = run_job(
        &bed.runner(),
        &Job::new().image(PRIVATE).script(["echo RAN"]),
    );
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("its registry serves it only with credentials, and this job has none");
    assert!(!out.log.lines().any(|l| l.trim() == "RAN"), "{}", out.log);
    let a = with_credentials(Job::new(), ROBOT.0, ROBOT.1);
    run_job(&bed.runner(), &a.image(PRIVATE).script(["echo ran"]))
        .assert_success()
        .assert_log_contains("ran");
    bed.assert_nothing_left();
}

/// The runner user's `~/.docker/config.json` logins are the admin's, not every job's: a job
/// without credentials cannot pull with them.
#[test]
fn the_runner_users_docker_login_does_not_serve_jobs_without_credentials() {
    let bed = private_bed();
    docker_login(&bed);
    let out = run_job(
        &bed.runner(),
        &Job::new().image(PRIVATE).script(["echo RAN"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}: {}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("AuthFailed");
    assert!(bed.sim.local_vms().is_empty());
    bed.assert_nothing_left();
}

/// A `tart login` lives in the runner user's login keychain, which macOS finds through the
/// user database: no HOME hides it from Tart. A job without credentials is refused before
/// Tart could use it, for an image to pull and for a cached one alike, naming the fix.
#[test]
fn a_job_without_credentials_is_refused_while_the_runner_user_has_a_tart_login_for_the_registry() {
    let bed = private_bed();
    keychain_login(&bed);
    let job = Job::new().image(PRIVATE).script(["echo RAN"]);
    for _attempt in ["to pull", "cached"] {
        let out = run_job(&bed.runner(), &job);
        assert!(
            matches!(out.verdict, Verdict::SystemFailure { .. }),
            "{:?}: {}",
            out.verdict,
            out.log
        );
        out.assert_log_contains(
            "the runner user has a `tart login` for registry.example.com in its keychain",
        )
        .assert_log_contains("tart logout registry.example.com");
        assert!(!out.log.lines().any(|l| l.trim() == "RAN"), "{}", out.log);
        assert!(bed.sim.local_vms().is_empty());
        // Next round: the image is in the cache (the admin pulled it with that login).
        bed.sim.tart_ok(["pull", PRIVATE]);
    }
    bed.assert_nothing_left();
}

/// `--host-registry-credentials` is the admin's explicit loan of those logins to jobs.
#[test]
fn with_host_registry_credentials_jobs_use_the_runner_users_logins() {
    let bed = private_bed().option(["--host-registry-credentials"]);
    keychain_login(&bed);
    run_job(
        &bed.runner(),
        &Job::new().image(PRIVATE).script(["echo ran"]),
    )
    .assert_success()
    .assert_log_contains("ran");
    bed.assert_nothing_left();
}

// --- Neighbouring VMs ---------------------------------------------------------------------

/// From inside a job's guest: can it open the SSH port of the VM at `ip`?
fn probe_neighbour(ip: &str) -> Vec<u8> {
    format!(
        "if timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/22; head -c 4 <&3' 2>/dev/null | grep -q SSH-; then echo NEIGHBOUR-REACHED; else echo NEIGHBOUR-UNREACHABLE; fi\n"
    )
    .into_bytes()
}

/// Two jobs side by side with the admin's defaults: neither guest can reach the other's
/// sshd (where the shared `admin` password would let it in), whatever the job variables say.
#[test]
fn at_concurrency_2_by_default_one_jobs_guest_cannot_reach_the_other_jobs_vm() {
    let bed = Bed::new().option(["--concurrency", "2"]);
    // A job may ask for less isolation; it does not get it.
    let a = bed
        .direct_job(LINUX)
        .var("TART_EXECUTOR_SOFTNET_ENABLED", "false");
    let b = bed.direct_job(LINUX);
    for job in [&a, &b] {
        let (code, log) = bed.stage(job, &["prepare"]);
        assert_eq!(code, 0, "{log}");
    }
    let b_ip = bed.sim.tart_ok(["ip", &b.vm_name()]).trim().to_string();
    let (code, log) = bed.run_script(&a, "build_script", &probe_neighbour(&b_ip));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("NEIGHBOUR-UNREACHABLE"), "{log}");
    // The driver itself still reaches both VMs.
    for job in [&a, &b] {
        let (code, log) = bed.run_script(job, "after_script", b"echo alive\n");
        assert_eq!((code, log.contains("alive")), (0, true), "{log}");
        let (code, log) = bed.stage(job, &["cleanup"]);
        assert_eq!(code, 0, "{log}");
    }
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// Turning isolation off is the admin's decision, and `doctor` says what it costs.
#[test]
fn with_softnet_turned_off_guests_reach_each_other_and_doctor_warns() {
    let bed = Bed::new().option(["--concurrency", "2", "--no-softnet"]);
    let (a, b) = (bed.direct_job(LINUX), bed.direct_job(LINUX));
    for job in [&a, &b] {
        let (code, log) = bed.stage(job, &["prepare"]);
        assert_eq!(code, 0, "{log}");
    }
    let b_ip = bed.sim.tart_ok(["ip", &b.vm_name()]).trim().to_string();
    let (_, log) = bed.run_script(&a, "build_script", &probe_neighbour(&b_ip));
    assert!(log.contains("NEIGHBOUR-REACHED"), "{log}");
    for job in [&a, &b] {
        bed.stage(job, &["cleanup"]);
    }
    let state = bed.state_dir.display().to_string();
    let doctor = |extra: &[&str]| {
        let mut args = vec![
            "doctor",
            "--format",
            "json",
            "--state-dir",
            &state,
            "--concurrency",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = bed.driver(&args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
        let softnet = report
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "softnet")
            .cloned()
            .expect("a softnet check");
        (
            softnet["status"].as_str().unwrap().to_string(),
            softnet["detail"].to_string(),
        )
    };
    let (status, detail) = doctor(&["--no-softnet"]);
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("can reach another job's VM"), "{detail}");
    let (status, detail) = doctor(&[]);
    assert_ne!(status, "warn", "{detail}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// Softnet without its privileges (neither setuid root nor passwordless sudo): `tart run`
/// ends at once, and prepare says what Softnet needs instead of waiting out the boot.
#[test]
fn softnet_without_its_privileges_fails_prepare_at_once_saying_how_to_fix_it() {
    let bed = Bed::new().option(["--concurrency", "2"]);
    bed.sim.set_softnet(Softnet::Unprivileged);
    let job = bed.direct_job(LINUX);
    let started = Instant::now();
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 2, "{log}");
    assert!(started.elapsed() < Duration::from_secs(20), "{log}");
    assert!(
        log.contains("Softnet process terminated prematurely"),
        "{log}"
    );
    assert!(
        log.contains("setuid root") && log.contains("--no-softnet"),
        "{log}"
    );
    bed.stage(&job, &["cleanup"]);
    // With passwordless sudo for softnet instead, the same job runs.
    bed.sim.set_softnet(Softnet::PasswordlessSudo);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    bed.stage(&job, &["cleanup"]);
    bed.assert_nothing_left_within(Duration::from_secs(10));
}
