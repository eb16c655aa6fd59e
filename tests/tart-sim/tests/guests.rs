//! Booting guests: real sshd in namespaces, the 2-macOS-guest limit, signals, shares,
//! exec, faults. Needs root, /usr/sbin/sshd and the users of tests/bed/setup-guest-users.sh.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn need_root() {
    assert!(
        can_boot(),
        "guest tests need root, /usr/sbin/sshd and the guest users (run tests/bed/setup-guest-users.sh)"
    );
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn state(b: &Bed, vm: &str) -> String {
    json(&b.ok(&["get", vm, "--format", "json"]).stdout)["State"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn done_when_ssh_login_list_running_and_stop_ends_sessions() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(MAC_BASE, "a");
    let r = b.run_bg("a", &[]);
    let ip = b.ip("a");
    assert!(
        ip.starts_with("127.") && ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{ip}"
    );
    let o = b.ssh(&ip, "admin", "admin", "id -un; echo $HOME; pwd");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "admin\n/Users/admin\n/Users/admin\n");
    let l = json(&b.ok(&["list", "--format", "json"]).stdout);
    let a = l
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        (a["State"].as_str(), a["Running"].as_bool()),
        (Some("running"), Some(true))
    );

    // A long session is cut off when the VM stops.
    let askpass = b.root.join("askpass.sh");
    let session = std::process::Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("admin@{ip}"))
        .arg("sleep 60")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("SIM_SSH_PASSWORD", "admin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !procs_matching(
        "sshd: admin@notty"
    )
    .is_empty()
        || !procs_matching("sleep 60").is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let o = b.tart(&["stop", "a"]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(b.wait_run(r, Duration::from_secs(5)), Some(0));
    assert_eq!(b.run_output("a").0, "Stopping VM...\n");
    let o = wait_output(session, Duration::from_secs(10));
    assert_ne!(o.code, 0, "the session must end with the VM");
    assert_eq!(state(&b, "a"), "stopped");
    assert!(
        procs_matching(&b.home.to_string_lossy()).is_empty(),
        "{:?}",
        procs_matching(&b.home.to_string_lossy())
    );
    // The lease outlives the VM: a stopped VM still has its (stale) IP.
    assert_eq!(b.ok(&["ip", "a"]).stdout.trim(), ip);
}

#[test]
fn wrong_password_is_refused() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg("vm", &[]);
    let ip = b.ip("vm");
    assert_ne!(b.ssh(&ip, "admin", "nope", "true").code, 0);
    assert_ne!(
        b.ssh(&ip, "builder", "b-uild3r!pw", "true").code,
        0,
        "only the image's user may log in"
    );
}

#[test]
fn image_with_its_own_user_logs_in_with_its_credentials() {
    need_root();
    let mut b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/team/builder:latest": {"os": "linux", "user": "builder", "password": "b-uild3r!pw", "pull_ms": 10, "faults": {"boot_delay_ms": 100}}}}"#);
    b.clone_vm("r.io/team/builder:latest", "vm");
    b.run_bg("vm", &[]);
    let ip = b.ip("vm");
    let o = b.ssh(&ip, "builder", "b-uild3r!pw", "id -un");
    assert_eq!(o.stdout, "builder\n", "{}", o.stderr);
}

#[test]
fn third_macos_guest_hits_the_limit_but_linux_guests_do_not_count() {
    need_root();
    let mut b = Bed::new();
    for v in ["m1", "m2", "m3"] {
        b.clone_vm(MAC_VANILLA, v);
    }
    b.clone_vm(UBUNTU, "l1");
    b.clone_vm(UBUNTU, "l2");
    b.run_bg("m1", &[]);
    b.run_bg("m2", &[]);
    assert!(wait_until(Duration::from_secs(5), || state(&b, "m1")
        == "running"
        && state(&b, "m2") == "running"));
    let o = b.tart(&["run", "--no-graphics", "m3"]);
    assert_eq!(o.code, 1);
    let msg = o.stderr.trim_end();
    assert!(
        msg == "The number of VMs exceeds the system limit (other running VMs: m1, m2)"
            || msg == "The number of VMs exceeds the system limit (other running VMs: m2, m1)",
        "{msg}"
    );
    assert_eq!(state(&b, "m3"), "stopped");
    let l1 = b.run_bg("l1", &[]);
    let l2 = b.run_bg("l2", &[]);
    b.ip("l1");
    b.ip("l2");
    assert_eq!(b.wait_run(l1, Duration::from_millis(10)), None);
    assert_eq!(b.wait_run(l2, Duration::from_millis(10)), None);
    // A slot frees when a macOS guest stops.
    b.ok(&["stop", "m1"]);
    let r3 = b.run_bg("m3", &[]);
    b.ip("m3");
    assert_eq!(b.wait_run(r3, Duration::from_millis(10)), None);
}

#[test]
fn running_twice_says_already_running_with_exit_2() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg("vm", &[]);
    assert!(wait_until(Duration::from_secs(5), || state(&b, "vm") == "running"));
    let o = b.tart(&["run", "vm"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "VM \"vm\" is already running!\n")
    );
}

#[test]
fn delete_of_a_running_vm_exits_1() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg("vm", &[]);
    assert!(wait_until(Duration::from_secs(5), || state(&b, "vm") == "running"));
    let o = b.tart(&["delete", "vm"]);
    assert_eq!((o.code, o.stderr.as_str()), (1, "VM \"vm\" is running\n"));
}

#[test]
fn ip_appears_only_after_the_boot_delay() {
    need_root();
    let mut b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/a/slow:latest": {"os": "linux", "pull_ms": 10, "faults": {"boot_delay_ms": 2500}}}}"#);
    b.clone_vm("r.io/a/slow:latest", "vm");
    b.run_bg("vm", &[]);
    assert!(wait_until(Duration::from_secs(5), || state(&b, "vm") == "running"));
    let o = b.tart(&["ip", "vm"]);
    assert_eq!((o.code, o.stderr.as_str()), (1, "no IP address found\n"));
    let t = Instant::now();
    let o = b.tart(&["ip", "vm", "--wait", "10"]);
    assert_eq!(o.code, 0);
    assert!(t.elapsed() >= Duration::from_millis(500));
}

#[test]
fn never_ip_fault_gives_no_ip_within_the_wait() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.set_fault("vm", "never_ip", serde_json::json!(true));
    b.run_bg("vm", &[]);
    let t = Instant::now();
    let o = b.tart(&["ip", "vm", "--wait", "2"]);
    assert_eq!((o.code, o.stderr.as_str()), (1, "no IP address found\n"));
    let el = t.elapsed();
    assert!(
        el >= Duration::from_secs(2) && el < Duration::from_millis(4500),
        "{el:?}"
    );
}

#[test]
fn run_dies_fault_exits_1_at_once_with_the_message() {
    need_root();
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.set_fault("vm", "run_dies", serde_json::json!(true));
    b.set_fault(
        "vm",
        "run_dies_message",
        serde_json::json!("Failed to start: boom"),
    );
    let o = b.tart(&["run", "vm"]);
    assert_eq!((o.code, o.stderr.as_str()), (1, "Failed to start: boom\n"));
    assert_eq!(state(&b, "vm"), "stopped");
}

#[test]
fn guest_dying_makes_run_say_guest_has_stopped_and_exit_0() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.set_fault("vm", "guest_dies_after_ms", serde_json::json!(800));
    let r = b.run_bg("vm", &[]);
    assert_eq!(b.wait_run(r, Duration::from_secs(10)), Some(0));
    assert_eq!(
        b.run_output("vm").0,
        "guest has stopped the virtual machine\n"
    );
    assert_eq!(state(&b, "vm"), "stopped");
}

#[test]
fn reject_logins_fault_refuses_the_image_password() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.set_fault("vm", "reject_logins", serde_json::json!(true));
    b.run_bg("vm", &[]);
    let ip = b.ip("vm");
    assert_ne!(b.ssh(&ip, "admin", "admin", "true").code, 0);
}

#[test]
fn sigint_prints_stopping_vm_and_exits_0() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let r = b.run_bg("vm", &[]);
    b.ip("vm");
    unsafe { libc::kill(b.run_pid(r), libc::SIGINT) };
    assert_eq!(b.wait_run(r, Duration::from_secs(5)), Some(0));
    assert_eq!(
        b.run_output("vm"),
        ("Stopping VM...\n".to_string(), String::new())
    );
}

#[test]
fn sigterm_kills_run_silently_and_the_guest_with_it() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let r = b.run_bg("vm", &[]);
    let ip = b.ip("vm");
    unsafe { libc::kill(b.run_pid(r), libc::SIGTERM) };
    assert_eq!(
        b.wait_run(r, Duration::from_secs(5)),
        Some(128 + libc::SIGTERM)
    );
    assert_eq!(b.run_output("vm"), (String::new(), String::new()));
    assert!(wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect_timeout(
            &format!("{ip}:22").parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_err()
    }));
    assert_eq!(state(&b, "vm"), "stopped");
}

#[test]
fn sigkill_of_run_takes_the_guest_down() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let r = b.run_bg("vm", &[]);
    b.ip("vm");
    unsafe { libc::kill(b.run_pid(r), libc::SIGKILL) };
    b.wait_run(r, Duration::from_secs(5));
    let home = b.home.to_string_lossy().into_owned();
    assert!(
        wait_until(Duration::from_secs(3), || procs_matching(&home).is_empty()),
        "{:?}",
        procs_matching(&home)
    );
}

#[test]
fn sigusr2_requests_a_guest_shutdown() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let r = b.run_bg("vm", &[]);
    b.ip("vm");
    unsafe { libc::kill(b.run_pid(r), libc::SIGUSR2) };
    assert_eq!(b.wait_run(r, Duration::from_secs(5)), Some(0));
    assert_eq!(
        b.run_output("vm").0,
        "Requesting guest OS to stop...\nguest has stopped the virtual machine\n"
    );
}

#[test]
fn exec_passes_exit_status_and_output_through() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg("vm", &[]);
    b.ip("vm");
    let o = b.tart(&[
        "exec",
        "vm",
        "sh",
        "-c",
        "id -un; pwd; echo err >&2; exit 7",
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (7, "admin\n/Users/admin\n", "err\n")
    );
    let o = b.tart(&["exec", "vm", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.code, 255);
    let o = b.tart(&["exec", "vm", "no-such-command"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("Error: "), "{}", o.stderr);
}

#[test]
fn exec_forwards_stdin_only_with_i() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg("vm", &[]);
    b.ip("vm");
    use std::io::Write;
    let run = |args: &[&str]| -> Out {
        let mut ch = b
            .cmd(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        wait_output(ch, Duration::from_secs(10))
    };
    assert_eq!(run(&["exec", "-i", "vm", "cat"]).stdout, "hello\n");
    assert_eq!(run(&["exec", "vm", "cat"]).stdout, "");
}

#[test]
fn exec_without_the_agent_fails_after_a_delay() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(MAC_VANILLA, "vm");
    b.run_bg("vm", &[]);
    b.ip("vm");
    let t = Instant::now();
    let o = b.tart(&["exec", "vm", "true"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .starts_with("Failed to connect to the VM using its control socket: "),
        "{}",
        o.stderr
    );
    assert!(o
        .stderr
        .trim_end()
        .ends_with(", is the Tart Guest Agent running?"));
    assert!(t.elapsed() >= Duration::from_secs(1));
}

#[test]
fn guest_paths_are_private_per_vm() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "x");
    b.clone_vm(UBUNTU, "y");
    b.run_bg("x", &[]);
    b.run_bg("y", &[]);
    b.ip("x");
    b.ip("y");
    for p in ["/tmp/f", "/var/tmp/f", "/Users/admin/f"] {
        assert_eq!(
            b.tart(&["exec", "x", "sh", "-c", &format!("echo x > {p}")])
                .code,
            0
        );
        let o = b.tart(&["exec", "y", "cat", p]);
        assert_ne!(o.code, 0, "{p} leaked between guests");
        assert!(
            !std::path::Path::new(p).exists()
                || std::fs::read_to_string(p).unwrap_or_default() != "x\n",
            "{p} leaked to the host"
        );
    }
}

#[test]
fn two_guests_sharing_at_the_same_guest_path_see_only_their_own_files() {
    need_root();
    let mut b = Bed::new();
    let s1 = b.share_dir("one");
    let s2 = b.share_dir("two");
    std::fs::write(s1.join("only-one"), "1").unwrap();
    std::fs::write(s2.join("only-two"), "2").unwrap();
    b.clone_vm(MAC_BASE, "p");
    b.clone_vm(MAC_BASE, "q");
    b.run_bg("p", &["--dir", &format!("builds:{}", s1.display())]);
    b.run_bg("q", &["--dir", &format!("builds:{}", s2.display())]);
    b.ip("p");
    b.ip("q");
    let ls = |vm: &str| {
        b.tart(&["exec", vm, "ls", "/Volumes/My Shared Files/builds"])
            .stdout
    };
    assert_eq!(ls("p"), "only-one\n");
    assert_eq!(ls("q"), "only-two\n");
    // Writes go to the host directory.
    assert_eq!(
        b.tart(&[
            "exec",
            "p",
            "sudo",
            "touch",
            "/Volumes/My Shared Files/builds/from-guest"
        ])
        .code,
        0
    );
    assert!(s1.join("from-guest").exists());
}

#[test]
fn single_unnamed_share_is_my_shared_files_itself() {
    need_root();
    let mut b = Bed::new();
    let s = b.share_dir("s");
    std::fs::write(s.join("hello"), "hi").unwrap();
    b.clone_vm(MAC_BASE, "vm");
    b.run_bg("vm", &["--dir", &s.to_string_lossy()]);
    b.ip("vm");
    assert_eq!(
        b.tart(&["exec", "vm", "cat", "/Volumes/My Shared Files/hello"])
            .stdout,
        "hi"
    );
}

#[test]
fn read_only_share_refuses_writes() {
    need_root();
    let mut b = Bed::new();
    let s = b.share_dir("ro");
    b.clone_vm(MAC_BASE, "vm");
    b.run_bg("vm", &["--dir", &format!("cache:{}:ro", s.display())]);
    b.ip("vm");
    let o = b.tart(&[
        "exec",
        "vm",
        "sudo",
        "touch",
        "/Volumes/My Shared Files/cache/x",
    ]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("Read-only file system"), "{}", o.stderr);
    assert!(!s.join("x").exists());
}

#[test]
fn linux_guest_mounts_a_tagged_share_with_mount_t_virtiofs() {
    need_root();
    let mut b = Bed::new();
    let s = b.share_dir("builds");
    std::fs::write(s.join("f"), "linux").unwrap();
    b.clone_vm(UBUNTU, "vm");
    b.run_bg(
        "vm",
        &[
            "--dir",
            &format!("{}:tag=tart.virtiofs.buildsdir.1", s.display()),
        ],
    );
    b.ip("vm");
    let o = b.tart(&["exec", "vm", "sh", "-c", "mkdir -p /tmp/b && sudo mount -t virtiofs tart.virtiofs.buildsdir.1 /tmp/b && cat /tmp/b/f"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "linux"), "{}", o.stderr);
    // Nothing is auto-mounted in Linux guests.
    assert_ne!(
        b.tart(&["exec", "vm", "ls", "/Volumes/My Shared Files"])
            .code,
        0
    );
}

#[test]
fn macos_guest_mount_virtiofs_mounts_a_custom_tag() {
    need_root();
    let mut b = Bed::new();
    let s = b.share_dir("c");
    std::fs::write(s.join("f"), "mac").unwrap();
    b.clone_vm(MAC_BASE, "vm");
    b.run_bg(
        "vm",
        &[
            "--dir",
            &format!("{}:tag=tart.virtiofs.cachedir.1", s.display()),
        ],
    );
    b.ip("vm");
    let o = b.tart(&[
        "exec",
        "vm",
        "sh",
        "-c",
        "mkdir -p /tmp/c && mount_virtiofs tart.virtiofs.cachedir.1 /tmp/c && cat /tmp/c/f",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "mac"), "{}", o.stderr);
}

#[test]
fn missing_guest_user_is_reported_with_the_setup_script() {
    need_root();
    let b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/a/ghost:latest": {"os": "linux", "user": "tart-sim-no-such-user", "pull_ms": 10}}}"#);
    b.clone_vm("r.io/a/ghost:latest", "vm");
    let o = b.tart(&["run", "vm"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("tests/bed/setup-guest-users.sh"),
        "{}",
        o.stderr
    );
}

#[test]
fn clone_reassigns_mac_at_run_when_a_running_vm_has_it() {
    need_root();
    let mut b = Bed::new();
    b.clone_vm(UBUNTU, "one");
    b.run_bg("one", &[]);
    assert!(wait_until(Duration::from_secs(5), || state(&b, "one") == "running"));
    // Force a duplicate MAC (as a copied VM directory would have).
    let cfg1 = std::fs::read_to_string(b.vm_dir("one").join("config.json")).unwrap();
    b.clone_vm(UBUNTU, "two");
    std::fs::write(b.vm_dir("two").join("config.json"), &cfg1).unwrap();
    let r = b.run_bg("two", &[]);
    b.ip("two");
    let (out, _) = b.run_output("two");
    assert_eq!(out, "There is already a running VM with the same MAC address!\nResetting VM to assign a new MAC address...\n");
    assert_eq!(b.wait_run(r, Duration::from_millis(10)), None);
}

#[test]
fn shared_files_belong_to_the_guest_user_and_writes_keep_host_ownership() {
    need_root();
    use std::os::unix::fs::MetadataExt;
    let mut b = Bed::new();
    let s = b.share_dir("owned");
    std::fs::write(s.join("host-file"), "h").unwrap();
    b.clone_vm(MAC_BASE, "vm");
    b.run_bg("vm", &["--dir", &format!("builds:{}", s.display())]);
    b.ip("vm");
    let o = b.tart(&["exec", "vm", "sh", "-c", "stat -c %U '/Volumes/My Shared Files/builds/host-file' && echo g > '/Volumes/My Shared Files/builds/guest-file'"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "admin\n"), "{}", o.stderr);
    let host_owner = std::fs::metadata(&s).unwrap().uid();
    assert_eq!(
        std::fs::metadata(s.join("guest-file")).unwrap().uid(),
        host_owner
    );
}

/// A `softnet` on PATH with the given mode (4755: setuid root, as Tart needs it).
fn softnet_on_path(b: &Bed, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = b.root.join("softnet-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let softnet = bin.join("softnet");
    std::fs::write(&softnet, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&softnet, std::fs::Permissions::from_mode(mode)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn a_softnet_guest_reaches_no_other_guest_while_the_host_reaches_it() {
    need_root();
    let mut b = Bed::new();
    let path = softnet_on_path(&b, 0o4755);
    b.clone_vm(UBUNTU, "plain");
    b.clone_vm(UBUNTU, "isolated");
    b.run_bg("plain", &[]);
    let mut isolated = b
        .cmd(&["run", "--no-graphics", "--net-softnet", "isolated"])
        .env("PATH", &path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (plain_ip, isolated_ip) = (b.ip("plain"), b.ip("isolated"));
    let probe = |ip: &str| {
        format!("if timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/22; head -c 4 <&3' 2>/dev/null | grep -q SSH-; then echo REACHED; else echo UNREACHABLE; fi")
    };
    // The host logs in to the Softnet guest; from there, the other guest is out of reach.
    let o = b.ssh(&isolated_ip, "admin", "admin", &probe(&plain_ip));
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "UNREACHABLE\n"),
        "{}",
        o.stderr
    );
    // Softnet filters what its guest sends, not what it receives.
    let o = b.ssh(&plain_ip, "admin", "admin", &probe(&isolated_ip));
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "REACHED\n"),
        "{}",
        o.stderr
    );
    // tart exec enters the Softnet guest's network too.
    let o = b.tart(&["exec", "isolated", "sh", "-c", &probe(&plain_ip)]);
    assert_eq!(o.stdout, "UNREACHABLE\n", "{}", o.stderr);
    let _ = isolated.kill();
    let _ = isolated.wait();
}

#[test]
fn softnet_without_root_privileges_ends_tart_run_with_softnets_message() {
    need_root();
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let path = softnet_on_path(&b, 0o755);
    let o: Out = b
        .cmd(&["run", "--no-graphics", "--net-softnet", "vm"])
        .env("PATH", &path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "root privileges are required to run and passwordless sudo was not available\nError: RuntimeFailed(why: \"Softnet process terminated prematurely\")\n"
    );
    // A passwordless sudo rule for softnet serves as well as the setuid bit.
    std::fs::write(
        b.host.join("softnet-sudoers"),
        "admin ALL=(root) NOPASSWD: softnet\n",
    )
    .unwrap();
    let mut run = b
        .cmd(&["run", "--no-graphics", "--net-softnet", "vm"])
        .env("PATH", &path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(!b.ip("vm").is_empty());
    let _ = run.kill();
    let _ = run.wait();
}
