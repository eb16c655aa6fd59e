//! What a real Mac does to a job that a plain test bed would not: launchd's minimal PATH,
//! macOS 15's Local Network privacy, a full DHCP pool, `tart exec` failing on its own, and
//! gitlab-runner keeping cleanup's output out of the job log. The simulator reproduces each
//! (fault knobs where a Mac does it only sometimes); these tests hold the driver to it.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Bed, DRIVER, MACOS_VANILLA};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};

const AGENT_IMAGE: &str = "ghcr.io/acme/with-agent:latest";
const PLAIN_IMAGE: &str = "ghcr.io/acme/plain:latest";
/// launchd's PATH for services, which `gitlab-runner install` gets.
const LAUNCHD_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

// --- Where the job's time went (gitlab-runner keeps cleanup's output out of the job log) ---

#[test]
fn the_time_summary_is_in_the_job_log_at_the_end_of_the_last_run_stage() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS_VANILLA).script(["echo work"]),
    );
    out.assert_success()
        .assert_log_contains("Where the job's time went:");
    let last = out.stage("cleanup_file_variables").expect("last run stage");
    assert!(
        last.stderr.contains("Where the job's time went:") && last.stderr.contains("run stages"),
        "{}",
        last.stderr
    );
    let build = out.stage("build_script").expect("build_script");
    assert!(!build.stderr.contains("Where the job's time went"));
    bed.assert_nothing_left();
}

// --- launchd's minimal PATH ------------------------------------------------------------

/// A HOME whose Nix profile holds `tart` (the simulator), as a nix-darwin user's would.
fn nix_profile_home(bed: &Bed) -> std::path::PathBuf {
    let home = bed.sim.root().join("home");
    let bin = home.join(".nix-profile/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(bed.sim.tart_path(), bin.join("tart")).unwrap();
    home
}

#[test]
fn a_runner_with_launchds_minimal_path_finds_tart_in_the_usual_install_directories() {
    let bed = Bed::new();
    let home = nix_profile_home(&bed);
    let runner = bed
        .runner()
        .env("PATH", LAUNCHD_PATH)
        .env("HOME", home.display().to_string());
    let out = run_job(
        &runner,
        &Job::new().image(MACOS_VANILLA).script(["echo found-tart"]),
    );
    out.assert_success().assert_log_contains("found-tart");
    bed.assert_nothing_left();
}

#[test]
fn doctor_says_when_tart_was_found_only_outside_path() {
    let bed = Bed::new();
    let home = nix_profile_home(&bed);
    let out = std::process::Command::new(DRIVER)
        .args(["doctor", "--state-dir"])
        .arg(&bed.state_dir)
        .envs(bed.sim.env())
        .env("PATH", LAUNCHD_PATH)
        .env("HOME", &home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PASS  tart:") && text.contains(".nix-profile/bin/tart"),
        "{text}"
    );
    assert!(
        text.contains("WARN  PATH: found `tart` in") && text.contains("launchd"),
        "{text}"
    );
}

// --- Local Network privacy (macOS 15+) -------------------------------------------------

#[test]
fn local_network_privacy_is_named_in_the_job_log_with_the_fix() {
    let bed = Bed::new()
        .image(
            PLAIN_IMAGE,
            Image::darwin().faults(|f| f.local_network_denied = true),
        )
        .option(["--timeout", "10"]);
    let started = Instant::now();
    let out = run_job(
        &bed.runner(),
        &Job::new().image(PLAIN_IMAGE).script(["echo never"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("No route to host")
        .assert_log_contains("Local Network privacy")
        .assert_log_contains("AllowedEthernetLocalNetworkAddresses");
    assert!(started.elapsed() < Duration::from_secs(120));
    bed.assert_nothing_left();
}

#[test]
fn the_auto_transport_falls_back_to_tart_exec_when_local_network_privacy_blocks_ssh() {
    // As on a Mac, the guest agent (a launchd agent of the GUI login) answers later than
    // the VM's network comes up.
    let bed = Bed::new()
        .image(
            AGENT_IMAGE,
            Image::darwin().agent(true).faults(|f| {
                f.local_network_denied = true;
                f.agent_starts_after_ms = Some(8000);
            }),
        )
        .option(["--transport", "auto", "--timeout", "60"]);
    let out = run_job(
        &bed.runner(),
        &Job::new().image(AGENT_IMAGE).script(["echo via-agent"]),
    );
    out.assert_success()
        .assert_log_contains("No route to host")
        .assert_log_contains("Using tart exec")
        .assert_log_contains("via-agent");
    bed.assert_nothing_left();
}

#[test]
fn doctor_finds_that_local_network_privacy_blocks_a_running_vm() {
    let bed = Bed::new().image(
        PLAIN_IMAGE,
        Image::darwin().faults(|f| f.local_network_denied = true),
    );
    bed.sim.tart_ok(["clone", PLAIN_IMAGE, "someones-vm"]);
    let mut run = bed
        .sim
        .command(["run", "--no-graphics", "someones-vm"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || bed
        .sim
        .tart(["ip", "someones-vm"])
        .status
        .success()));
    let out = bed.driver(&["doctor", "--state-dir", bed.state_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  connection to a VM:") && text.contains("No route to host"),
        "{text}"
    );
    assert!(text.contains("Local Network"), "{text}");
    bed.sim.tart_ok(["stop", "someones-vm"]);
    let _ = run.wait();
}

// --- The DHCP pool ---------------------------------------------------------------------

/// Adds to the simulated host's lease file `n` unexpired leases of other MACs, in bootpd's
/// format, on the host's addresses `.254` downwards, after the `skip` highest.
fn foreign_leases(bed: &Bed, skip: u32, n: u32) {
    // The host's /24 is fixed by its first guest; `tart ip` of a booted VM shows it.
    let block = std::fs::read_to_string(bed.sim.sim_host_dir().join("subnet"))
        .expect("the host has a network once a VM booted");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let mut text = std::fs::read_to_string(bed.sim.sim_host_dir().join("var/db/dhcpd_leases"))
        .unwrap_or_default();
    for i in skip..skip + n {
        let mac = format!("2:0:0:0:{:x}:{:x}", i / 256, i % 256);
        text.push_str(&format!(
            "{{\n\tname=other-{i}\n\tip_address={}.{}\n\thw_address=1,{mac}\n\tidentifier=1,{mac}\n\tlease=0x{expiry:x}\n}}\n",
            block.trim(),
            254 - i
        ));
    }
    std::fs::write(bed.sim.sim_host_dir().join("var/db/dhcpd_leases"), text).unwrap();
}

fn doctor_dhcp(bed: &Bed) -> String {
    let leases = bed.sim.sim_host_dir().join("var/db/dhcpd_leases");
    let out = bed.driver(&[
        "doctor",
        "--state-dir",
        bed.state_dir.to_str().unwrap(),
        "--dhcp-leases",
        leases.to_str().unwrap(),
        "--bootpd-plist",
        "/nonexistent/bootpd.plist",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_warns_before_the_dhcp_pool_runs_out_and_fails_once_it_has() {
    let bed = Bed::new().option(["--timeout", "8"]);
    // One job gives the host its network and a lease of the simulator's own making.
    run_job(
        &bed.runner(),
        &Job::new().image(MACOS_VANILLA).script(["true"]),
    )
    .assert_success();
    let text = doctor_dhcp(&bed);
    assert!(text.contains("PASS  DHCP pool: 1 of 253"), "{text}");

    foreign_leases(&bed, 0, 210);
    let text = doctor_dhcp(&bed);
    assert!(
        text.contains("WARN  DHCP pool: 211 of 253") && text.contains("DHCPLeaseTimeSecs"),
        "{text}"
    );

    foreign_leases(&bed, 210, 42);
    let text = doctor_dhcp(&bed);
    assert!(
        text.contains("FAIL  DHCP pool: 253 of 253") && text.contains("exhausted"),
        "{text}"
    );
    // And a Mac's bootpd then gives a new VM no address.
    let out = run_job(
        &bed.runner(),
        &Job::new().image(common::MACOS).script(["true"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("no IP address");
    bed.assert_nothing_left();
}

// --- `tart exec` failing on its own ----------------------------------------------------

#[test]
fn a_broken_tart_exec_stream_is_a_system_failure_not_the_scripts_exit_status() {
    let bed = Bed::new()
        .image(
            AGENT_IMAGE,
            Image::darwin()
                .agent(true)
                .faults(|f| f.exec_breaks_after_ms = Some(4000)),
        )
        .option(["--transport", "exec"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(AGENT_IMAGE)
            .script(["echo started", "sleep 8"]),
    );
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "{:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains("Transport became inactive")
        .assert_log_contains("not the script's failure");
    bed.assert_nothing_left();
}

#[test]
fn with_tart_exec_the_scripts_own_exit_status_is_the_build_failure_and_the_record_stays_hidden() {
    let bed = Bed::new()
        .image(AGENT_IMAGE, Image::darwin().agent(true))
        .option(["--transport", "exec"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(AGENT_IMAGE)
            .script(["echo to-stderr >&2", "exit 1"]),
    );
    out.assert_build_failure(1).assert_log_contains("to-stderr");
    assert!(!out.log.contains("tartdrv-status"), "{}", out.log);
    bed.assert_nothing_left();
}

/// A line bootpd did not write: Tart refuses the whole leases file ("unexpected DHCPD
/// leases file format"), so `tart ip` fails for every VM. The driver's own reading skips
/// the line and keeps the other leases (`dhcp::tests`); doctor still warns, naming the line.
#[test]
fn doctor_warns_that_tart_refuses_a_leases_file_with_a_malformed_line() {
    let bed = Bed::new();
    let leases = bed.sim.sim_host_dir().join("var/db/dhcpd_leases");
    std::fs::create_dir_all(leases.parent().unwrap()).unwrap();
    std::fs::write(
        &leases,
        "{\n\tname=vm\n\tip_address=192.168.64.2\n\thw_address=1,7a:47:bb:5f:97:c9\n\tlease=0x7fffffff\n}\ngarbage\n",
    )
    .unwrap();
    let text = doctor_dhcp(&bed);
    assert!(
        text.contains("WARN  DHCP pool: 1 of 253")
            && text.contains("line 7")
            && text.contains("Tart refuses the whole file"),
        "{text}"
    );
}
