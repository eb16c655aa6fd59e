//! `doctor` against the Tart simulator: what it says about Tart and about this driver's VMs
//! on a host with real (simulated) VMs, live and orphaned.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Bed, MACOS};
use harness::{run_job, Job};

/// doctor's JSON report: (check, status, detail).
fn doctor(bed: &Bed) -> Vec<(String, String, String)> {
    doctor_with(bed, &[])
}

/// The same with more options.
fn doctor_with(bed: &Bed, extra: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec![
        "doctor",
        "--format",
        "json",
        "--state-dir",
        bed.state_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = bed.driver(&args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (field("check"), field("status"), field("detail"))
        })
        .collect()
}

fn check<'a>(report: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    report
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {report:?}"))
}

#[test]
fn doctor_reads_tarts_version_from_the_host() {
    let bed = Bed::new();
    let report = doctor(&bed);
    let tart = check(&report, "tart");
    assert_eq!(tart.1, "pass", "{tart:?}");
    assert!(tart.2.contains("2.35.0"), "{tart:?}");
}

#[test]
fn doctor_tells_a_live_jobs_vm_from_an_orphan_and_names_the_fix() {
    let bed = Bed::new();
    run_job(
        &bed.runner().cleanup_exec(None),
        &Job::new().image(MACOS).script(["true"]),
    )
    .assert_success();
    let vm = bed.sim.local_vms().into_iter().next().unwrap().name;

    let report = doctor(&bed);
    assert!(check(&report, "VMs").2.contains("1 running"), "{report:?}");
    assert_eq!(
        check(&report, "orphaned VMs").1,
        "pass",
        "a live job's VM reported as an orphan: {report:?}"
    );

    // The job's supervisor dies (gitlab-runner killed): now it is an orphan.
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &format!("supervise --vm {vm}")])
        .status();
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &format!("tart run {vm}")])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    let report = doctor(&bed);
    let orphans = check(&report, "orphaned VMs");
    assert_eq!(orphans.1, "warn", "{orphans:?}");
    assert!(orphans.2.contains(&vm), "{orphans:?}");

    let gc = bed.driver(&["gc", "--state-dir", bed.state_dir.to_str().unwrap()]);
    assert!(gc.status.success());
    assert_eq!(check(&doctor(&bed), "orphaned VMs").1, "pass");
    bed.assert_nothing_left();
}

/// A `tart login` in the runner user's keychain makes the driver refuse jobs without
/// credentials for that registry: doctor says so, with the fix, before a job finds out.
#[test]
fn doctor_warns_about_a_tart_login_in_the_runner_users_keychain() {
    let bed = Bed::new();
    let report = doctor(&bed);
    let logins = check(&report, "registry logins");
    assert_eq!(logins.1, "pass", "{logins:?}");
    tart_login(&bed, "ghcr.io", "secret-pw");
    let report = doctor(&bed);
    let logins = check(&report, "registry logins");
    assert_eq!(logins.1, "warn", "{logins:?}");
    assert!(logins.2.contains("`tart login` for ghcr.io"), "{logins:?}");
    assert!(!logins.2.contains("secret-pw"), "{logins:?}");
}

/// `tart login <host>` as the runner user, the password on stdin.
fn tart_login(bed: &Bed, host: &str, password: &str) {
    use std::io::Write;
    let mut login = bed
        .sim
        .command([
            "login",
            host,
            "--username",
            "robot",
            "--password-stdin",
            "--no-validate",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    assert!(login.wait().unwrap().success());
}

/// Logins for two of the registries the allow list names: doctor names both (one search
/// per registry), not only the first one the keychain returns.
#[test]
fn doctor_names_every_allowed_registry_the_runner_user_is_logged_in_to() {
    let bed = Bed::new();
    tart_login(&bed, "registry.example.com", "pw-one");
    tart_login(&bed, "ghcr.io", "pw-two");
    let report = doctor_with(
        &bed,
        &[
            "--allow-image",
            "ghcr.io/**",
            "--allow-image",
            "registry.example.com/**",
            "--allow-image",
            "quay.io/**",
        ],
    );
    let logins = check(&report, "registry logins");
    assert_eq!(logins.1, "warn", "{logins:?}");
    assert!(
        logins.2.contains("ghcr.io") && logins.2.contains("registry.example.com"),
        "{logins:?}"
    );
    assert!(!logins.2.contains("quay.io"), "{logins:?}");
    assert!(!logins.2.contains("pw-"), "{logins:?}");
}

/// Another user's VM on Tart's shared NAT network without Softnet could answer for this
/// runner's VMs' addresses, whatever this runner's own Softnet does: doctor names it, says
/// what Softnet and the identity proof do and do not stop, and how to fix it.
#[test]
fn doctor_warns_about_another_users_vm_running_without_softnet() {
    let bed = Bed::new();
    let developer = bed.sim.another_user();
    developer.tart_ok(["clone", common::LINUX, "developers-vm"]);
    let mut run = developer
        .command(["run", "developers-vm", "--no-graphics"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tart run");
    assert!(common::wait_until(Duration::from_secs(20), || {
        developer.running_count() == 1
    }));
    let report = doctor(&bed);
    let neighbours = check(&report, "other VMs' isolation");
    assert_eq!(neighbours.1, "warn", "{neighbours:?}");
    assert!(
        neighbours
            .2
            .contains("`tart run developers-vm` without Softnet"),
        "{neighbours:?}"
    );
    assert!(
        neighbours
            .2
            .contains("send as another VM's IP and MAC address"),
        "{neighbours:?}"
    );
    developer.stop_and_delete_all();
    let _ = run.wait();
    bed.assert_nothing_left();
}
