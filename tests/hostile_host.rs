//! A hostile host: another local user, another state directory and another job's variables
//! try to reach a job's VM, its script and secrets, or its host state. Each is refused or
//! survives, with nothing leaked and nothing lost.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_until, Bed, LINUX, MACOS};

/// `nobody`: a local user other than the runner's.
const OTHER_UID: u32 = 65534;

fn give_to_other_user(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A system failure (the admin's to fix) that names the offending path and the fix.
#[track_caller]
fn assert_refused(code: i32, log: &str, path: &Path, problem: &str) {
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(&path.display().to_string()), "{log}");
    assert!(log.contains(problem), "{log}");
    assert!(log.contains("--state-dir"), "no fix named: {log}");
}

/// `doctor` must say what the stages do: the state dir check fails.
#[track_caller]
fn assert_doctor_refuses(bed: &Bed) {
    let check = bed.doctor_check("state dir");
    assert_eq!(check["status"], "fail", "{check}");
}

/// Another local user creates the state directory first, world-writable (as after a reboot
/// cleared /tmp), and later plants a connection record and a control socket of their own
/// for the job's VM. Prepare refuses the directory, and neither the run stage nor cleanup
/// talks to the planted socket: the job's script and secrets never reach it.
#[test]
fn a_state_dir_another_user_created_is_refused_and_its_socket_gets_nothing() {
    let mut bed = Bed::new();
    let planted = bed.sim.root().join("planted-state");
    std::fs::create_dir(&planted).unwrap();
    give_to_other_user(&planted, 0o777);
    bed.state_dir = planted.clone();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_refused(code, &log, &planted, "belongs to uid 65534");
    assert!(bed.sim.local_vms().is_empty(), "a VM was made");
    assert_doctor_refuses(&bed);

    let record = planted.join("vms").join(job.vm_name());
    std::fs::create_dir_all(&record).unwrap();
    std::fs::write(
        record.join("connection.json"),
        r#"{"transport":"ssh","os":"darwin","shell":"bash","ip":"127.0.0.1","user":"admin","env":[]}"#,
    )
    .unwrap();
    let socket = UnixListener::bind(record.join("ssh")).unwrap();
    socket.set_nonblocking(true).unwrap();
    for path in [planted.join("vms"), record.clone(), record.join("ssh")] {
        give_to_other_user(&path, 0o777);
    }
    let (code, log) = bed.run_script(&job, "build_script", b"echo job-secret\n");
    assert_eq!(code, 2, "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        matches!(socket.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "a stage talked to the planted control socket"
    );
}

/// The state directory is a symbolic link (to a directory of the runner's own user, even):
/// whoever can change the link controls where sockets go. Refused; nothing lands in the
/// link's target.
#[test]
fn a_symlinked_state_dir_is_refused() {
    let mut bed = Bed::new();
    let target = bed.sim.root().join("link-target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = bed.sim.root().join("state-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    bed.state_dir = link.clone();
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_refused(code, &log, &link, "symbolic link");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    assert!(bed.sim.local_vms().is_empty(), "a VM was made");
    assert_doctor_refuses(&bed);
}

/// Every level below the state directory is checked too: another user's `vms/` could have
/// the job's record renamed away and replaced.
#[test]
fn a_level_below_the_state_dir_owned_by_another_user_is_refused() {
    let bed = Bed::new();
    std::fs::create_dir(&bed.state_dir).unwrap();
    std::fs::set_permissions(&bed.state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let vms = bed.state_dir.join("vms");
    std::fs::create_dir(&vms).unwrap();
    give_to_other_user(&vms, 0o755);
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_refused(code, &log, &vms, "belongs to uid 65534");
    assert_eq!(std::fs::read_dir(&vms).unwrap().count(), 0);
    assert!(bed.sim.local_vms().is_empty(), "a VM was made");
    assert_doctor_refuses(&bed);
}

/// A directory above the state directory that others can write (and that is not sticky
/// like /tmp) lets them replace the state directory wholesale.
#[test]
fn a_state_dir_inside_a_directory_others_can_write_is_refused() {
    let mut bed = Bed::new();
    let open = bed.sim.root().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    bed.state_dir = open.join("state");
    let job = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_refused(code, &log, &open, "writable by group or others");
    assert!(!bed.state_dir.exists());
    assert_doctor_refuses(&bed);
}

/// The state directory at the longest length this OS's socket paths allow, with the longest
/// VM name the driver makes (12-character runner token, 20-digit job id): the job runs.
#[test]
fn the_longest_socket_path_the_driver_makes_works() {
    let mut bed = Bed::new();
    let budget = if cfg!(target_os = "macos") { 103 } else { 107 };
    // <state>/vms/<41-byte name>/ssh plus ssh's 17-byte temporary suffix.
    let root_len = budget - 17 - "/vms//ssh".len() - 41;
    let base = bed.sim.root().display().to_string();
    bed.state_dir = format!("{base}/{}", "s".repeat(root_len - base.len() - 1)).into();
    assert_eq!(bed.state_dir.as_os_str().len(), root_len);
    let job = bed.direct_job(MACOS).identity("ABCDEFabcdef", u64::MAX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = bed.run_script(&job, "build_script", b"echo longest-path-works\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("longest-path-works"), "{log}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

/// One byte more and ssh could not bind the job's control socket: refused at once with the
/// fix, instead of a login that keeps failing until the boot timeout.
#[test]
fn a_state_dir_too_long_for_socket_paths_is_refused_at_once() {
    let mut bed = Bed::new().option(["--timeout", "30"]);
    let budget = if cfg!(target_os = "macos") { 103 } else { 107 };
    let root_len = budget - 17 - "/vms//ssh".len() - 41 + 1;
    let base = bed.sim.root().display().to_string();
    bed.state_dir = format!("{base}/{}", "s".repeat(root_len - base.len() - 1)).into();
    let job = bed.direct_job(MACOS);
    let started = std::time::Instant::now();
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("too long") && log.contains("bytes shorter"),
        "{log}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    bed.assert_nothing_left();
}

// --- Identity -------------------------------------------------------------------------------

/// Without the runner's payload (gitlab-runner before 14.1, or a stage started by hand), a
/// job's variables are all that would name it, and they can name any other job: refused, so
/// a job claiming a live job's id and runner token neither runs in its VM nor destroys it.
#[test]
fn without_a_payload_a_job_claiming_another_jobs_identity_is_refused() {
    let bed = Bed::new().option(["--concurrency", "2", "--cpu", "2"]);
    let victim = bed.direct_job(MACOS);
    let (code, log) = bed.stage(&victim, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    let attacker = bed
        .direct_job(MACOS)
        .var("CI_JOB_ID", &victim.id.to_string())
        .var("CI_RUNNER_SHORT_TOKEN", &victim.token)
        .without_payload();
    let (code, log) = bed.run_script(&attacker, "build_script", b"touch /tmp/attacker-was-here\n");
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("JOB_RESPONSE_FILE"), "{log}");
    let (code, log) = bed.stage(&attacker, &["cleanup"]);
    assert_eq!(code, 2, "{log}");
    let (code, log) = bed.run_script(
        &victim,
        "build_script",
        b"test ! -e /tmp/attacker-was-here && echo victim-untouched\n",
    );
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("victim-untouched"), "{log}");
    let (code, log) = bed.stage(&victim, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

/// The project's host cache directory is keyed by the payload's project id: without a
/// payload a job's CI_PROJECT_ID could aim it at another project's cache.
#[test]
fn without_a_payload_a_job_cannot_reach_another_projects_cache() {
    let bed = Bed::new();
    let cache = bed.sim.root().join("host-cache");
    std::fs::create_dir(&cache).unwrap();
    let bed = bed.option(["--cache-dir", cache.to_str().unwrap()]);
    let job = bed
        .direct_job(MACOS)
        .var("CI_PROJECT_ID", "4242")
        .without_payload();
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("--unsafe-job-identity-from-variables"),
        "{log}"
    );
    assert!(!cache.join("project-4242").exists());
    let (code, _) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 2);
    bed.assert_nothing_left();
}

/// Old runners keep working when the admin accepts the risk.
#[test]
fn the_admin_can_opt_in_to_identity_from_variables_for_old_runners() {
    let bed = Bed::new().option(["--unsafe-job-identity-from-variables"]);
    let job = bed.direct_job(MACOS).without_payload();
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("WARNING: no JOB_RESPONSE_FILE"), "{log}");
    let (code, log) = bed.run_script(&job, "build_script", b"echo old-runner-ok\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("old-runner-ok"));
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left();
}

/// The warm VMs booted and waiting for a job, by record.
fn ready_warm_vms(bed: &Bed) -> Vec<PathBuf> {
    bed.vm_state_dirs()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("tartdrv-warm-")
                && p.join("warm-ready").exists()
                && !p.join("warm-claim").exists()
        })
        .collect()
}

/// A guest script printing whether `ip`'s sshd answered (where an image's shared `admin`
/// password would let the guest in).
fn probe_neighbour(ip: &str) -> Vec<u8> {
    format!(
        "if timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/22; head -c 4 <&3' 2>/dev/null | grep -q SSH-; then echo NEIGHBOUR-REACHED; else echo NEIGHBOUR-UNREACHABLE; fi\n"
    )
    .into_bytes()
}

/// `doctor`'s `softnet` check with the bed's options and `extra`: (status, detail).
fn doctor_softnet(bed: &Bed, extra: &[&str]) -> (String, String) {
    let state = bed.state_dir.display().to_string();
    let mut args = vec!["doctor", "--format", "json", "--state-dir", &state];
    args.extend(bed.options.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let out = bed.driver(&args);
    let report: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let check = report
        .iter()
        .find(|c| c["check"] == "softnet")
        .expect("a softnet check");
    (
        check["status"].as_str().unwrap().to_string(),
        check["detail"].to_string(),
    )
}

/// One job at a time (`--concurrency 1`) with a warm pool is two VMs at once: the warm VM
/// booted beside the job is the next job's VM. With the admin's defaults both run behind
/// Softnet, so the running job's guest cannot open the warm VM's sshd (and could not
/// send as its address); `doctor` sees no exposure.
#[test]
fn a_jobs_guest_cannot_reach_the_warm_vm_booted_beside_it() {
    let bed = Bed::new().option(["--warm-pool", "1", "--warm-image", LINUX]);
    let job = bed.direct_job(LINUX);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(
        wait_until(Duration::from_secs(90), || ready_warm_vms(&bed).len() == 1),
        "no warm VM was booted beside the job"
    );
    let warm = ready_warm_vms(&bed).remove(0);
    let warm_vm = warm.file_name().unwrap().to_string_lossy().into_owned();
    let warm_ip = bed.sim.tart_ok(["ip", &warm_vm]).trim().to_string();
    let (code, log) = bed.run_script(&job, "build_script", &probe_neighbour(&warm_ip));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("NEIGHBOUR-UNREACHABLE"), "{log}");
    let runs: Vec<Vec<String>> = bed
        .sim
        .invocations()
        .into_iter()
        .filter(|i| i.args.first().map(String::as_str) == Some("run"))
        .map(|i| i.args)
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter().all(|a| a.iter().any(|x| x == "--net-softnet")),
        "{runs:?}"
    );
    let (status, detail) = doctor_softnet(&bed, &[]);
    assert_ne!(status, "warn", "{detail}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    let state = bed.state_dir.display().to_string();
    assert!(
        wait_until(Duration::from_secs(90), || common::pids_with_args(&[
            "warm",
            "--background",
            &state
        ])
        .is_empty()),
        "a background replenisher did not finish"
    );
    let out = bed.driver(&["warm", "--state-dir", &state, "--warm-pool", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.assert_nothing_left_within(Duration::from_secs(10));
}

/// The admin's opt-out still wins over the warm pool's default, and `doctor` says what it
/// costs.
#[test]
fn with_softnet_turned_off_beside_a_warm_pool_doctor_warns() {
    let bed = Bed::new().option(["--warm-pool", "1", "--warm-image", LINUX]);
    let (status, detail) = doctor_softnet(&bed, &["--no-softnet"]);
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("2 VMs can run at once"), "{detail}");
    assert!(detail.contains("--warm-pool 1"), "{detail}");
}
