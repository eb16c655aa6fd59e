//! The driver's Orchard client against the fake controller (tests/orchard-sim): the hidden
//! `orchard-proxy` (ssh's ProxyCommand) with its retries and its bound, and
//! `doctor --backend orchard` with good and bad tokens, missing roles and the wrong
//! certificate. The controller serves TLS with its own self-signed certificate, as a real
//! one does by default.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::DRIVER;
use harness::sim::{Image, SimHost};
use orchard_sim::{Account, Config, Sim, TartEnv, Vm, VmEnd, WorkerSpec, ALL_ROLES};

const ACCOUNT: &str = "gitlab";
const TOKEN: &str = "tok-9f2c41d7";
const MACOS: &str = "ghcr.io/cirruslabs/macos-sequoia-base:latest";

/// A controller, a token file, and the driver's admin options for it.
struct Fleet {
    sim: Sim,
    dir: tempfile::TempDir,
    /// Kept alive: the Tart worker's simulated Mac.
    _host: Option<SimHost>,
}

impl Fleet {
    fn start(change: impl FnOnce(&mut Config)) -> Fleet {
        Fleet::with_host(None, change)
    }

    fn with_host(host: Option<SimHost>, change: impl FnOnce(&mut Config)) -> Fleet {
        let mut cfg = Config {
            accounts: vec![
                Account::new(ACCOUNT, TOKEN, ALL_ROLES),
                Account::new("reader", "tok-reader", &["compute:read"]),
            ],
            workers: vec![WorkerSpec {
                name: "mini-1".into(),
                tart: host.as_ref().map(|h| TartEnv {
                    tart: h.tart_path(),
                    env: h.env(),
                }),
                ..WorkerSpec::default()
            }],
            scheduler_interval_ms: 100,
            ..Config::default()
        };
        change(&mut cfg);
        let sim = Sim::start(cfg).expect("start the fake controller");
        let dir = tempfile::tempdir().unwrap();
        Fleet {
            sim,
            dir,
            _host: host,
        }
    }

    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("token-{}", token.len()));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `--orchard-*` options for `account`/`token`, trusting the controller's fingerprint.
    fn options(&self, account: &str, token: &str) -> Vec<String> {
        let fingerprint = self.sim.fingerprint.clone().unwrap();
        self.options_trusting(account, token, &["--orchard-ca-fingerprint", &fingerprint])
    }

    fn options_trusting(&self, account: &str, token: &str, trust: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--orchard-url".to_string(),
            self.sim.url.clone(),
            "--orchard-service-account".into(),
            account.into(),
            "--orchard-token-file".into(),
            self.token_file(token).display().to_string(),
            // Without it every job is refused on Orchard (and doctor says so).
            "--public-image".into(),
            r"ghcr\.io/cirruslabs/.*".into(),
        ];
        args.extend(trust.iter().map(|s| s.to_string()));
        args
    }

    fn running_vm(&self, name: &str, image: &str) {
        let vm = Vm {
            name: name.into(),
            image: image.into(),
            headless: true,
            ..Vm::default()
        };
        self.sim.create_vm(vm).expect("create VM");
        assert!(
            self.sim
                .wait_status(name, "running", Duration::from_secs(60)),
            "{name} never ran: {:?}",
            self.sim.vms()
        );
    }
}

fn driver() -> Command {
    let mut cmd = Command::new(DRIVER);
    cmd.env_remove("TART_DRIVER_CONFIG")
        .env_remove("TART_DRIVER_LOG");
    cmd
}

/// Runs `orchard-proxy`, writes `input`, reads `want` bytes back, closes its stdin.
fn proxy_round_trip(args: &[String], input: &[u8], want: usize) -> (Vec<u8>, Output) {
    proxy_session(args, input, want, true)
}

/// Like [`proxy_round_trip`]; with `close_stdin` false, stdin stays open until it exits.
fn proxy_session(
    args: &[String],
    input: &[u8],
    want: usize,
    close_stdin: bool,
) -> (Vec<u8>, Output) {
    let mut child = driver()
        .arg("orchard-proxy")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = vec![0u8; want];
    let read = stdout.read_exact(&mut got);
    let open_stdin = if close_stdin {
        drop(stdin);
        None
    } else {
        Some(stdin)
    };
    let out = wait_bounded(child, Duration::from_secs(60));
    drop(open_stdin);
    if read.is_err() {
        got.clear();
    }
    (got, out)
}

/// Like [`proxy_session`], as ssh after a complete session: reads `want` bytes, waits for
/// `until` (a bounded poll), then closes the proxy's stdin.
fn proxy_session_ending(
    args: &[String],
    input: &[u8],
    want: usize,
    until: impl Fn() -> bool,
) -> (Vec<u8>, Output) {
    let mut child = driver()
        .arg("orchard-proxy")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = vec![0u8; want];
    let read = stdout.read_exact(&mut got);
    assert!(common::wait_until(Duration::from_secs(10), until));
    drop(stdin);
    let out = wait_bounded(child, Duration::from_secs(60));
    if read.is_err() {
        got.clear();
    }
    (got, out)
}

fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orchard-proxy did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn proxy_args(fleet: &Fleet, vm: &str, extra: &[&str]) -> Vec<String> {
    let mut args = fleet.options(ACCOUNT, TOKEN);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([vm.to_string(), "22".into()]);
    args
}

#[test]
fn orchard_proxy_carries_bytes_both_ways_through_the_port_forward() {
    let fleet = Fleet::start(|_| {});
    fleet.running_vm("gl-a-1-1", "img");
    let (echo, out) = proxy_round_trip(&proxy_args(&fleet, "gl-a-1-1", &[]), b"ping\n", 5);
    assert_eq!(echo, b"ping\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn orchard_proxy_retries_503_500_and_408_until_the_vm_answers() {
    let fleet = Fleet::start(|c| c.faults.port_forward_errors = vec![503, 500, 408]);
    fleet.running_vm("gl-a-2-1", "img");
    let (echo, out) = proxy_round_trip(&proxy_args(&fleet, "gl-a-2-1", &[]), b"hi", 2);
    assert_eq!(echo, b"hi", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fleet.sim.port_forwards_served(), 1);
}

#[test]
fn orchard_proxy_gives_up_at_its_bound_and_says_so() {
    let fleet = Fleet::start(|c| c.faults.port_forward_errors = vec![503; 1000]);
    fleet.running_vm("gl-a-3-1", "img");
    let started = Instant::now();
    let (_, out) = proxy_round_trip(
        &proxy_args(&fleet, "gl-a-3-1", &["--retry-for", "3"]),
        b"",
        0,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("gave up after"), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn orchard_proxy_does_not_retry_a_failed_vm() {
    let fleet =
        Fleet::start(|c| c.faults.fail_vms_with = Some("VM failed: VM exited unexpectedly".into()));
    fleet
        .sim
        .create_vm(Vm {
            name: "gl-a-4-1".into(),
            image: "img".into(),
            ..Vm::default()
        })
        .unwrap();
    assert!(fleet
        .sim
        .wait_status("gl-a-4-1", "failed", Duration::from_secs(10)));
    let started = Instant::now();
    let (_, out) = proxy_round_trip(&proxy_args(&fleet, "gl-a-4-1", &[]), b"", 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("terminal state 'failed'"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn orchard_proxy_fails_when_the_controller_cuts_the_websocket() {
    let fleet = Fleet::start(|c| c.faults.cut_after_bytes = Some(3));
    fleet.running_vm("gl-a-5-1", "img");
    let (echo, out) = proxy_session(&proxy_args(&fleet, "gl-a-5-1", &[]), b"abcdef", 3, false);
    assert_eq!(echo, b"abc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("ended without a WebSocket close"),
        "{stderr}"
    );
}

/// Orchard's coder/websocket closes the TCP connection before it writes its close frame, so
/// a VM side that hangs up often reaches the proxy as a dropped connection: once ssh then
/// ends its side, as it does after a complete session, that is a normal end.
#[test]
fn orchard_proxy_takes_a_drop_after_the_vm_side_hung_up_as_a_normal_end_once_ssh_ends() {
    let fleet = Fleet::start(|c| c.faults.vm_end = VmEnd::Drop);
    fleet.running_vm("gl-a-10-1", "img");
    let (echo, out) = proxy_session_ending(
        &proxy_args(&fleet, "gl-a-10-1", &[]),
        b"hangup\n",
        7,
        || fleet.sim.vm_side_drops() == 1,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(echo, b"hangup\n", "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// A drop while ssh's session goes on is an error, but not a diagnosis the proxy cannot
/// make: the same drop comes from the VM side ending as from a controller restart.
#[test]
fn orchard_proxy_names_both_causes_when_the_connection_drops_while_ssh_goes_on() {
    let fleet = Fleet::start(|c| c.faults.vm_end = VmEnd::Drop);
    fleet.running_vm("gl-a-11-1", "img");
    let (echo, out) = proxy_session(&proxy_args(&fleet, "gl-a-11-1", &[]), b"hangup\n", 7, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(echo, b"hangup\n", "{stderr}");
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the VM side ended")
            && stderr.contains("the controller or the network cut the connection"),
        "{stderr}"
    );
    assert_eq!(fleet.sim.vm_side_drops(), 1);
}

#[test]
fn orchard_proxy_ends_its_side_with_a_normal_close() {
    let fleet = Fleet::start(|_| {});
    fleet.running_vm("gl-a-8-1", "img");
    let (echo, out) = proxy_round_trip(&proxy_args(&fleet, "gl-a-8-1", &[]), b"bye", 3);
    assert_eq!(echo, b"bye", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(common::wait_until(Duration::from_secs(10), || {
        !fleet.sim.client_close_codes().is_empty()
    }));
    assert_eq!(
        fleet.sim.client_close_codes(),
        [1000],
        "a close without a status is logged by the controller as a failed proxy"
    );
}

/// The guest's sshd hangs up (it was sent no SSH): the controller closes the WebSocket with
/// status 1000; the proxy answers that close and exits as ssh's connection's end.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and the Tart simulator's sshd guests (cargo test --features e2e)"
)]
fn orchard_proxy_answers_the_controllers_close_when_sshd_hangs_up_and_exits_cleanly() {
    let host = SimHost::new().with_image(MACOS, Image::darwin());
    // The close frame as coder/websocket means it; often it drops instead (next test).
    let fleet = Fleet::with_host(Some(host), |c| c.faults.vm_end = VmEnd::Frame);
    fleet.running_vm("gl-a-9-1", MACOS);
    let args = proxy_args(&fleet, "gl-a-9-1", &["--retry-for", "60"]);
    // stdin stays open: only the controller's close can end the proxy.
    let (banner, out) = proxy_session(&args, b"not ssh\r\n", 8, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(banner, b"SSH-2.0-", "{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(common::wait_until(Duration::from_secs(10), || {
        !fleet.sim.vm_side_closes().is_empty()
    }));
    assert_eq!(
        fleet.sim.vm_side_closes(),
        [true],
        "the controller's close went unanswered"
    );
}

/// The same hang-up as the real controller often delivers it: the connection drops with no
/// close frame; once ssh ends its side (its session was over), the proxy exits cleanly.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and the Tart simulator's sshd guests (cargo test --features e2e)"
)]
fn orchard_proxy_exits_cleanly_when_sshd_hangs_up_and_the_controller_drops_the_connection() {
    let host = SimHost::new().with_image(MACOS, Image::darwin());
    let fleet = Fleet::with_host(Some(host), |c| c.faults.vm_end = VmEnd::Drop);
    fleet.running_vm("gl-a-12-1", MACOS);
    let args = proxy_args(&fleet, "gl-a-12-1", &["--retry-for", "60"]);
    let (banner, out) =
        proxy_session_ending(&args, b"not ssh\r\n", 8, || fleet.sim.vm_side_drops() == 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(banner, b"SSH-2.0-", "{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(fleet.sim.vm_side_closes().is_empty());
}

#[test]
fn orchard_proxy_keeps_the_token_out_of_its_arguments_and_debug_log() {
    let fleet = Fleet::start(|c| c.faults.port_forward_errors = vec![503; 1000]);
    fleet.running_vm("gl-a-6-1", "img");
    let args = proxy_args(&fleet, "gl-a-6-1", &["--retry-for", "2"]);
    assert!(!args.iter().any(|a| a.contains(TOKEN)), "{args:?}");
    let out = driver()
        .arg("orchard-proxy")
        .args(&args)
        .env("TART_DRIVER_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attempt 1"),
        "the debug log shows the retries: {stderr}"
    );
    let basic = format!("{ACCOUNT}:{TOKEN}");
    for secret in [TOKEN.to_string(), base64_of(&basic)] {
        assert!(!stderr.contains(&secret), "{stderr}");
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// ssh with `ProxyCommand = driver orchard-proxy …` to a real OpenSSH guest: one login, a
/// command runs, its exit status comes back.
#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root and the Tart simulator's sshd guests (cargo test --features e2e)"
)]
fn ssh_through_orchard_proxy_runs_a_command_in_the_guest_and_gets_its_exit_status() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let host = SimHost::new().with_image(MACOS, Image::darwin().authorized_key(public.trim()));
    let fleet = Fleet::with_host(Some(host), |_| {});
    fleet.running_vm("gl-a-7-1", MACOS);
    let proxy = std::iter::once(DRIVER.to_string())
        .chain(["orchard-proxy".to_string()])
        .chain(fleet.options(ACCOUNT, TOKEN))
        .chain(["--retry-for".into(), "60".into(), "%h".into(), "%p".into()])
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("ssh")
        .args([
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-i")
        .arg(&key)
        .args([
            "-l",
            "admin",
            "gl-a-7-1",
            "echo from-the-guest; whoami; exit 7",
        ])
        .env_remove("TART_DRIVER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("from-the-guest\nadmin"), "{stdout}");
    assert_eq!(
        fleet.sim.port_forwards_served(),
        1,
        "one login, one WebSocket"
    );
}

/// One line of doctor's JSON report.
#[derive(Debug)]
struct Finding {
    name: String,
    status: String,
    detail: String,
    fix: String,
}

/// doctor's JSON report, and its exit code.
fn doctor(options: &[String]) -> (Vec<Finding>, Option<i32>) {
    let out = driver()
        .args(["doctor", "--backend", "orchard", "--format", "json"])
        .args(options)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            Finding {
                name: field("check"),
                status: field("status"),
                detail: field("detail"),
                fix: field("fix"),
            }
        })
        .collect();
    (checks, out.status.code())
}

fn check<'a>(report: &'a [Finding], name: &str) -> &'a Finding {
    report
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {report:#?}"))
}

#[test]
fn doctor_passes_a_good_token_and_reports_the_fleets_capacity() {
    let fleet = Fleet::start(|_| {});
    let (report, code) = doctor(&fleet.options(ACCOUNT, TOKEN));
    for name in [
        "orchard settings",
        "orchard token file",
        "orchard controller",
        "orchard TLS trust",
        "orchard service account",
        "orchard roles",
        "orchard workers",
    ] {
        assert_eq!(
            check(&report, name).status,
            "pass",
            "{:#?}",
            check(&report, name)
        );
    }
    assert!(
        check(&report, "orchard workers")
            .detail
            .contains("room for 2 of this runner's VMs"),
        "{report:#?}"
    );
    assert!(
        check(&report, "orchard TLS trust")
            .detail
            .contains(fleet.sim.fingerprint.as_deref().unwrap()),
        "{report:#?}"
    );
    assert_eq!(code, Some(0));
}

#[test]
fn doctor_rides_out_a_short_controller_restart_by_retrying() {
    let fleet = Fleet::start(|_| {});
    let options = fleet.options(ACCOUNT, TOKEN);
    fleet.sim.restart(Duration::from_millis(1200));
    std::thread::sleep(Duration::from_millis(100));
    let (report, code) = doctor(&options);
    assert_eq!(
        check(&report, "orchard controller").status,
        "pass",
        "{report:#?}"
    );
    assert_eq!(code, Some(0), "{report:#?}");
}

#[test]
fn doctor_says_a_bad_token_is_refused_and_how_to_fix_it() {
    let fleet = Fleet::start(|_| {});
    let (report, code) = doctor(&fleet.options(ACCOUNT, "not-the-token"));
    let account = check(&report, "orchard service account");
    assert_eq!(account.status, "fail", "{account:?}");
    assert!(
        account.detail.contains("wrong name or token"),
        "{account:?}"
    );
    assert!(account.fix.contains("--orchard-token-file"), "{account:?}");
    assert_eq!(code, Some(2));
}

#[test]
fn doctor_names_the_role_a_service_account_lacks() {
    let fleet = Fleet::start(|_| {});
    let (report, _) = doctor(&fleet.options("reader", "tok-reader"));
    let roles = check(&report, "orchard roles");
    assert_eq!(roles.status, "fail", "{roles:?}");
    assert!(roles.detail.contains("lacks compute:write"), "{roles:?}");
    assert!(roles.fix.contains("compute:write"), "{roles:?}");
}

#[test]
fn doctor_refuses_a_controller_whose_certificate_is_not_the_pinned_one() {
    let fleet = Fleet::start(|_| {});
    let wrong = "00".repeat(32);
    let (report, code) =
        doctor(&fleet.options_trusting(ACCOUNT, TOKEN, &["--orchard-ca-fingerprint", &wrong]));
    let tls = check(&report, "orchard TLS trust");
    assert_eq!(tls.status, "fail", "{tls:?}");
    let seen = fleet.sim.fingerprint.as_deref().unwrap();
    assert!(
        tls.detail.contains(seen),
        "the detail names the certificate seen: {tls:?}"
    );
    assert!(tls.fix.contains("--orchard-ca-fingerprint"), "{tls:?}");
    assert!(
        report.iter().all(|c| c.name != "orchard service account"),
        "no token sent to an untrusted controller"
    );
    assert_eq!(code, Some(2));
}

#[test]
fn doctor_trusts_the_controllers_own_certificate_given_as_a_pem_file() {
    let fleet = Fleet::start(|_| {});
    let pem = fleet.dir.path().join("controller.pem");
    std::fs::write(&pem, fleet.sim.cert_pem.as_deref().unwrap()).unwrap();
    let (report, code) = doctor(&fleet.options_trusting(
        ACCOUNT,
        TOKEN,
        &["--orchard-ca-file", pem.to_str().unwrap()],
    ));
    assert_eq!(
        check(&report, "orchard TLS trust").status,
        "pass",
        "{report:#?}"
    );
    assert_eq!(code, Some(0), "{report:#?}");
}

#[test]
fn doctor_tells_that_a_self_signed_controller_needs_a_pin() {
    let fleet = Fleet::start(|_| {});
    let (report, _) = doctor(&fleet.options_trusting(ACCOUNT, TOKEN, &[]));
    let tls = check(&report, "orchard TLS trust");
    assert_eq!(tls.status, "fail", "{tls:?}");
    assert!(tls.fix.contains("self-signed"), "{tls:?}");
}

#[test]
fn doctor_fails_when_no_worker_is_online() {
    let fleet = Fleet::start(|c| c.workers.clear());
    let (report, _) = doctor(&fleet.options(ACCOUNT, TOKEN));
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "fail", "{workers:?}");
    assert!(workers.fix.contains("orchard worker run"), "{workers:?}");
}

#[test]
fn doctor_warns_when_the_runner_takes_more_jobs_than_the_fleet_has_slots() {
    let fleet = Fleet::start(|_| {});
    let mut options = fleet.options(ACCOUNT, TOKEN);
    options.extend(["--concurrency".to_string(), "3".into()]);
    let (report, _) = doctor(&options);
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "warn", "{workers:?}");
    assert!(workers.fix.contains("concurrent"), "{workers:?}");
}

fn labelled(name: &str, label: &str) -> WorkerSpec {
    let (k, v) = label.split_once('=').unwrap();
    WorkerSpec {
        name: name.into(),
        labels: [(k.to_string(), v.to_string())].into(),
        ..WorkerSpec::default()
    }
}

fn with(mut options: Vec<String>, extra: &[&str]) -> Vec<String> {
    options.extend(extra.iter().map(|s| s.to_string()));
    options
}

#[test]
fn doctor_counts_only_the_workers_with_the_runners_labels() {
    let fleet = Fleet::start(|c| {
        c.workers = vec![
            labelled("ios-1", "pool=ios"),
            labelled("android-1", "pool=android"),
        ];
    });
    let options = with(
        fleet.options(ACCOUNT, TOKEN),
        &["--orchard-label", "pool=ios"],
    );
    let (report, _) = doctor(&with(options.clone(), &["--concurrency", "2"]));
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "pass", "{workers:?}");
    assert!(
        workers
            .detail
            .contains("1 of them macOS workers with the labels pool=ios; room for 2"),
        "{workers:?}"
    );
    // Three jobs at once: the fleet has four slots, but the runner's VMs fit in two.
    let (report, _) = doctor(&with(options, &["--concurrency", "3"]));
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "warn", "{workers:?}");
    assert!(workers.fix.contains("to 2"), "{workers:?}");
}

#[test]
fn doctor_fails_when_no_online_worker_has_the_runners_labels() {
    let fleet = Fleet::start(|_| {});
    let options = with(
        fleet.options(ACCOUNT, TOKEN),
        &["--orchard-label", "pool=ios"],
    );
    let (report, code) = doctor(&options);
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "fail", "{workers:?}");
    assert!(workers.fix.contains("--orchard-label"), "{workers:?}");
    assert!(workers.fix.contains("--labels"), "{workers:?}");
    assert_eq!(code, Some(2));
}

#[test]
fn doctor_counts_room_in_the_runners_resource_sizes_after_what_already_runs() {
    let fleet = Fleet::start(|_| {});
    // Another client's macOS VM takes one of the worker's two slots.
    fleet.running_vm("someone-elses-vm", "img");
    let options = with(
        fleet.options(ACCOUNT, TOKEN),
        &["--orchard-resource", "org.cirruslabs.tart-vms=2"],
    );
    let (report, _) = doctor(&options);
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "pass", "{workers:?}");
    assert!(
        workers.detail.contains(
            "room for 1 of this runner's VMs (org.cirruslabs.tart-vms=2 each), 0 free now"
        ),
        "{workers:?}"
    );
}

#[test]
fn doctor_names_a_resource_no_worker_offers() {
    let fleet = Fleet::start(|_| {});
    let options = with(
        fleet.options(ACCOUNT, TOKEN),
        &["--orchard-resource", "example.com/gpu=1"],
    );
    let (report, _) = doctor(&options);
    let workers = check(&report, "orchard workers");
    assert_eq!(workers.status, "fail", "{workers:?}");
    assert!(workers.fix.contains("`example.com/gpu`"), "{workers:?}");
    assert!(workers.fix.contains("--orchard-resource"), "{workers:?}");
}

#[test]
fn doctor_without_orchard_settings_says_which_options_to_give() {
    let (report, code) = doctor(&[]);
    let settings = check(&report, "orchard settings");
    assert_eq!(settings.status, "fail");
    assert!(settings.fix.contains("--orchard-url"), "{settings:?}");
    assert_eq!(code, Some(2));
}

#[test]
fn per_job_host_directories_are_refused_with_the_orchard_backend() {
    let fleet = Fleet::start(|_| {});
    let out = driver()
        .args([
            "config",
            "--backend",
            "orchard",
            "--builds-dir",
            "/srv/builds",
        ])
        .args(fleet.options(ACCOUNT, TOKEN))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--builds-dir"), "{stderr}");
    assert!(stderr.contains("distributed cache"), "{stderr}");
    assert!(out.stdout.is_empty(), "config printed JSON anyway");
}

#[test]
fn pull_policy_never_is_refused_with_the_orchard_backend() {
    let fleet = Fleet::start(|_| {});
    let out = driver()
        .args(["config", "--backend", "orchard", "--pull-policy", "never"])
        .args(fleet.options(ACCOUNT, TOKEN))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--pull-policy never"), "{stderr}");
    assert!(stderr.contains("if-not-present"), "{stderr}");
}

#[test]
fn the_orchard_backend_without_a_controller_names_the_options_to_give() {
    let out = driver()
        .args(["config", "--backend", "orchard", "--config", "/dev/null"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--orchard-url"), "{stderr}");
}
