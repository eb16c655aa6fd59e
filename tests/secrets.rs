//! Secrets: the registry password, the SSH password and the runner token must not show up
//! where others can read them. During whole jobs a sampler reads every process's argv and
//! environment from /proc; afterwards the job log, the runner log and every file under the
//! driver's state directory and Tart's home are searched.
//!
//! What is allowed, and why: gitlab-runner hands job variables to each stage in its
//! environment (`CUSTOM_ENV_*`), so the driver's own stage processes carry the job's secrets;
//! Tart takes registry credentials only from its environment, so a `tart pull`/`clone` of a
//! private image carries them for the length of the pull. Nothing long-lived (the supervisor,
//! `tart run`, the guest, the ssh master) may carry any of them, and no argv ever.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::Bed;
use harness::sim::Image;
use harness::{run_job, Job};

const PRIVATE: &str = "registry.example.com/acme/private-macos:latest";
const REGISTRY_PASSWORD: &str = "regpw-Q7x9Lk2m";
const SSH_PASSWORD: &str = "b-uild3r!pw";

/// One sighting of a secret in a process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sighting {
    secret: &'static str,
    place: &'static str,
    comm: String,
    cmdline: String,
    /// In another PID namespace than ours: a simulated guest's process.
    in_guest: bool,
}

/// Reads every process's argv and environ once, recording where any secret appears.
fn sample(secrets: &[&'static str], me: u32, seen: &Mutex<BTreeSet<Sighting>>) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        for (place, bytes) in [("argv", &cmdline), ("environ", &environ)] {
            for &secret in secrets {
                if contains(bytes, secret.as_bytes()) {
                    let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    let ns = |p: &Path| std::fs::read_link(p.join("ns/pid")).ok();
                    seen.lock().unwrap().insert(Sighting {
                        in_guest: ns(&e.path()) != ns(Path::new("/proc/self")),
                        secret,
                        place,
                        comm: comm.trim().to_string(),
                        cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
                    });
                }
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` that contains a secret.
fn files_with(dir: &Path, secrets: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() && !simulator_file(&e.path()) {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                for s in secrets {
                    if contains(&bytes, s.as_bytes()) {
                        out.push(format!("{} holds {s}", e.path().display()));
                    }
                }
            }
        }
    }
    out
}

/// The simulator's own bookkeeping (its catalogue, each VM's `sim.json` and the guest's
/// private files) holds the image's password by design; a real Tart home has none of these.
fn simulator_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "catalogue.json"
        || name == "sim.json"
        || path.components().any(|c| c.as_os_str() == "guest")
}

/// Stage processes of the driver (not its supervisor), a Tart pull or clone (the registry
/// password only) and the job's own script in the guest (GitLab exports the job's variables
/// to it) may carry job secrets in their environment; nothing may carry them in argv.
fn allowed(s: &Sighting) -> bool {
    if s.place != "environ" {
        return false;
    }
    if s.in_guest {
        return true;
    }
    let stage = s.cmdline.contains("gitlab-runner-tart-driver")
        && !s.cmdline.contains(" supervise ")
        && [" prepare ", " run ", " cleanup ", " config "]
            .iter()
            .any(|st| s.cmdline.contains(st));
    let tart_fetch = s.secret == REGISTRY_PASSWORD
        && s.comm == "tart"
        && (s.cmdline.contains(" pull ") || s.cmdline.contains(" clone "));
    stage || tart_fetch
}

#[test]
fn no_secret_reaches_argv_long_lived_processes_logs_or_files() {
    let bed = Bed::new().image(
        PRIVATE,
        Image::darwin()
            .credentials("builder", SSH_PASSWORD)
            .registry_auth("robot", REGISTRY_PASSWORD)
            .boot_delay_ms(800),
    );
    let password_file = bed.sim.root().join("ssh-password");
    std::fs::write(&password_file, format!("{SSH_PASSWORD}\n")).unwrap();
    let bed = bed.option([
        "--ssh-username",
        "builder",
        "--ssh-password-file",
        password_file.to_str().unwrap(),
    ]);
    let secrets = [REGISTRY_PASSWORD, SSH_PASSWORD];
    let seen = Mutex::new(BTreeSet::new());
    let done = AtomicBool::new(false);
    let me = std::process::id();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                sample(&secrets, me, &seen);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let out = run_job(
            &bed.runner(),
            &Job::new()
                .image(PRIVATE)
                .masked_var("TART_REGISTRY_USERNAME", "robot")
                .masked_var("TART_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
                .before_script(["echo before"])
                .script(["echo job-ran-as-$(whoami)", "sleep 1"])
                .after_script(["echo after"]),
        );
        done.store(true, Ordering::Relaxed);
        out
    });
    out.assert_success()
        .assert_log_contains("job-ran-as-builder");
    let seen = seen.into_inner().unwrap();
    let bad: Vec<_> = seen.iter().filter(|s| !allowed(s)).collect();
    assert!(
        bad.is_empty(),
        "secrets seen where they must not be: {bad:#?}"
    );
    // The sampler did see the processes it had to: proof that it looked.
    assert!(
        seen.iter()
            .any(|s| s.comm == "tart" && s.secret == REGISTRY_PASSWORD),
        "the sampler never saw the pull: {seen:#?}"
    );
    for s in secrets {
        assert!(!out.log.contains(s), "{s} in the job log");
        assert!(!out.runner_log.contains(s), "{s} in the runner log");
        for stage in out.stages.iter().chain(&out.cleanups) {
            assert!(
                !stage.stdout.contains(s) && !stage.stderr.contains(s),
                "{s} in {}",
                stage.name
            );
        }
    }
    let files: Vec<_> = [&bed.state_dir, &bed.sim.tart_home().to_path_buf()]
        .iter()
        .flat_map(|d| files_with(d, &secrets))
        .collect();
    assert!(files.is_empty(), "{files:#?}");
    bed.assert_nothing_left();
}

/// State files written while the job is alive (connection.json, logs, the askpass file) are
/// searched too, not only what is left at the end.
#[test]
fn state_files_of_a_live_job_hold_no_secret() {
    let bed = Bed::new().image(
        PRIVATE,
        Image::darwin().credentials("builder", SSH_PASSWORD),
    );
    let password_file = bed.sim.root().join("ssh-password");
    std::fs::write(&password_file, SSH_PASSWORD).unwrap();
    let bed = bed.option([
        "--ssh-username",
        "builder",
        "--ssh-password-file",
        password_file.to_str().unwrap(),
    ]);
    let job = bed.direct_job(PRIVATE);
    let (code, log) = bed.stage(&job, &["prepare"]);
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(SSH_PASSWORD));
    let files = files_with(&bed.state_dir, &[SSH_PASSWORD]);
    assert!(files.is_empty(), "{files:#?}");
    let files = files_with(bed.sim.tart_home(), &[SSH_PASSWORD]);
    assert!(files.is_empty(), "{files:#?}");
    let (code, _) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0);
    bed.assert_nothing_left();
}

/// `runner-config` reads runner tokens from files and writes config.toml (0600); the token
/// never appears in its argv, its output or its errors.
#[test]
fn runner_config_keeps_the_runner_token_out_of_argv_and_output() {
    let token = "glrt-SeCrEtToKeN0123456789";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("mac-1.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "concurrent": 2,
            "runners": [{
                "name": "mac-1",
                "url": "https://gitlab.example.com",
                "token_file": token_file,
                "driver": common::DRIVER,
            }]
        })
        .to_string(),
    )
    .unwrap();
    let output = dir.path().join("config.toml");
    let out = std::process::Command::new(common::DRIVER)
        .args(["runner-config", "--spec"])
        .arg(&spec)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!contains(&out.stdout, token.as_bytes()));
    assert!(!contains(&out.stderr, token.as_bytes()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.toml is readable by others");
    // A broken spec fails without echoing the token it already read.
    std::fs::write(
        &spec,
        serde_json::json!({
            "concurrent": 2,
            "runners": [{"name": "mac-1", "url": "not a url", "token_file": token_file, "driver": common::DRIVER, "bogus": 1}]
        })
        .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(common::DRIVER)
        .args(["runner-config", "--spec"])
        .arg(&spec)
        .arg("--output")
        .arg(dir.path().join("other.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !contains(&out.stderr, token.as_bytes()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// gitlab-runner SIGKILLs a prepare that ignores its cancel, and may never run cleanup.
/// Killed while ssh logs in with the admin's password (a slow login: an `ssh` that waits 2 s
/// before it starts), prepare leaves no file that holds the password, or any part of it.
#[test]
fn a_prepare_killed_during_the_ssh_login_leaves_no_password_behind() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new().image(
        PRIVATE,
        Image::darwin().credentials("builder", SSH_PASSWORD),
    );
    let slow_ssh = bed.sim.bin_dir().join("ssh");
    std::fs::write(&slow_ssh, "#!/bin/sh\nsleep 2\nexec /usr/bin/ssh \"$@\"\n").unwrap();
    std::fs::set_permissions(&slow_ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let password_file = bed.sim.root().join("ssh-password");
    std::fs::write(&password_file, SSH_PASSWORD).unwrap();
    let bed = bed.option([
        "--ssh-username",
        "builder",
        "--ssh-password-file",
        password_file.to_str().unwrap(),
    ]);
    let job = bed.direct_job(PRIVATE);
    let mut prepare = bed
        .stage_command(&job, &["prepare"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let askpass = bed
        .state_dir
        .join("vms")
        .join(job.vm_name())
        .join("askpass");
    assert!(
        common::wait_until(Duration::from_secs(30), || askpass.exists()),
        "prepare never started the login"
    );
    std::thread::sleep(Duration::from_millis(200));
    common::kill_group(prepare.id(), libc::SIGKILL);
    let _ = prepare.wait();
    let half = &SSH_PASSWORD[..SSH_PASSWORD.len() / 2];
    let files = files_with(&bed.state_dir, &[SSH_PASSWORD, half]);
    assert!(files.is_empty(), "{files:#?}");
    let (code, log) = bed.stage(&job, &["cleanup"]);
    assert_eq!(code, 0, "{log}");
    bed.assert_nothing_left_within(Duration::from_secs(10));
}
