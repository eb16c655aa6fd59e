//! `tart run`: boots a "guest" = a real OpenSSH sshd in its own PID and mount namespaces,
//! bound to a loopback address of its own. Also the guest's init (`__guest-init`) and
//! `tart exec`'s entry into the guest.

use crate::cli::*;
use crate::cmds::{self, open_vm, read_config, running_pid, vm_dir, write_config};
use crate::macos_guest;
use crate::oci::SimVm;
use crate::util::*;
use crate::{Fail, R};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUN: Cmd = Cmd {
    name: "run",
    opts: &[
        flag("no-graphics"),
        flag("graphics"),
        flag("serial"),
        opt("serial-path", "serial-path"),
        flag("no-audio"),
        flag("no-clipboard"),
        flag("recovery"),
        flag("vnc"),
        flag("vnc-experimental"),
        opt("disk", "disk"),
        opt("rosetta", "rosetta"),
        opt("dir", "dir"),
        flag("nested"),
        opt("net-bridged", "interface name"),
        flag("net-softnet"),
        opt("net-softnet-allow", "comma-separated CIDRs"),
        opt("net-softnet-block", "comma-separated CIDRs"),
        opt("net-softnet-expose", "comma-separated port specifications"),
        opt("net-softnet-control-fd", "fd"),
        flag("net-host"),
        opt("root-disk-opts", "options"),
        flag("suspendable"),
        flag("capture-system-keys"),
        flag("no-trackpad"),
        flag("no-pointer"),
        flag("no-keyboard"),
        opt("provisioning-opts", "options"),
    ],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart run [<options>] <name>",
};

pub const DEFAULT_TAG: &str = "com.apple.virtio-fs.automount";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Share {
    pub name: Option<String>,
    pub path: String,
    pub ro: bool,
}

#[derive(Serialize, Deserialize, Debug)]
struct Plan {
    darwin: bool,
    user: String,
    user_home: String,
    uid: u32,
    gid: u32,
    guest_dir: String,
    sshd_config: String,
    shares: BTreeMap<String, Vec<Share>>,
    #[serde(default)]
    homebrew: bool,
    /// Behind Softnet: a network namespace of its own (see softnet.rs).
    #[serde(default)]
    softnet: bool,
    /// The guest OS's boot: its sshd answers only after this long, whatever an older DHCP
    /// lease for its MAC address tells `tart ip` (as on a Mac, where a clone of the same
    /// image keeps the MAC and the lease file still names an address for it).
    #[serde(default)]
    boot_delay_ms: u64,
}

fn parse_dir(spec: &str) -> Result<(String, Share), Fail> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let mut ro = false;
    let mut tag = DEFAULT_TAG.to_string();
    if parts.len() >= 2 {
        let last = parts[parts.len() - 1];
        let items: Vec<&str> = last.split(',').collect();
        if items.iter().all(|i| *i == "ro" || i.starts_with("tag=")) {
            for i in items {
                if i == "ro" {
                    ro = true;
                } else {
                    tag = i["tag=".len()..].to_string();
                }
            }
            parts.pop();
        }
    }
    let (name, path) = if parts.len() >= 2 {
        (Some(parts[0].to_string()), parts[1..].join(":"))
    } else {
        (None, parts[0].to_string())
    };
    let path = if let Some(rest) = path.strip_prefix('~') {
        format!("{}{}", std::env::var("HOME").unwrap_or_default(), rest)
    } else {
        path
    };
    if path.starts_with("//") || spec.contains("://") {
        return Err(Fail::Error(
            "tart-sim: --dir with an archive URL is not simulated".into(),
        ));
    }
    Ok((tag, Share { name, path, ro }))
}

fn group_shares(cmd: &Cmd, specs: &[String]) -> R<BTreeMap<String, Vec<Share>>> {
    let mut by_tag: BTreeMap<String, Vec<Share>> = BTreeMap::new();
    for s in specs {
        let (tag, sh) = parse_dir(s)?;
        by_tag.entry(tag).or_default().push(sh);
    }
    for shares in by_tag.values_mut() {
        if shares.len() > 1 {
            if shares.iter().any(|s| s.name.is_none()) {
                return Err(usage_error(cmd, "invalid --dir syntax: for multiple directory shares each one of them should be named"));
            }
            // duplicate names: the last one wins
            let mut seen: Vec<Share> = vec![];
            for s in shares.drain(..) {
                seen.retain(|x| x.name != s.name);
                seen.push(s);
            }
            *shares = seen;
        }
    }
    Ok(by_tag)
}

pub fn ips_dir() -> PathBuf {
    let p = std::env::var_os("TART_SIM_IPS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/tart-sim-ips"));
    let _ = fs::create_dir_all(&p);
    p
}

/// The simulated host's own /24 of loopback addresses, `127.A.B.0`: like a Mac's private
/// NAT network, no other simulated host hands out its addresses, so a stale lease can only
/// point at this host's own guests, as on a real Mac. Blocks are claimed machine-wide (a
/// file per block naming its host) and reclaimed once their host directory is gone.
fn host_block() -> Option<String> {
    let host = sim_host();
    let cached = host.join("subnet");
    if let Ok(block) = fs::read_to_string(&cached) {
        return Some(block.trim().to_string());
    }
    let blocks = ips_dir().join("blocks");
    let _ = fs::create_dir_all(&blocks);
    let me = host.canonicalize().unwrap_or(host.clone());
    for a in 10..=250u32 {
        for b in 0..=255u32 {
            let block = format!("127.{a}.{b}");
            let claim = blocks.join(&block);
            let owner = fs::read_to_string(&claim).ok();
            match &owner {
                // A new block: exactly one host can create its claim.
                None => {
                    let created = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&claim);
                    match created {
                        Ok(mut f) => {
                            let _ = f.write_all(me.to_string_lossy().as_bytes());
                        }
                        Err(_) => continue,
                    }
                }
                // A dead host's block: take it over.
                Some(path) if !Path::new(path.trim()).exists() => {
                    let _ = fs::write(&claim, me.to_string_lossy().as_bytes());
                }
                Some(_) => continue,
            }
            if fs::read_to_string(&claim).ok().as_deref().map(str::trim)
                == Some(&*me.to_string_lossy())
            {
                let _ = fs::write(&cached, &block);
                return Some(block);
            }
        }
    }
    None
}

/// Picks an address of this simulated host's block and holds its lock file. The second
/// value says whether bootpd has it to give: as on a Mac, once every address of the pool is
/// leased to other MACs (leases outlive their VMs), a new VM boots without a lease, and
/// only its sshd needs an address to listen on. bootpd answers a MAC with the address of
/// its lease: when another running VM (another TART_HOME's clone of the same image) holds
/// that address, both claim it and the host keeps reaching the first one, so this VM's
/// sshd gets an address nobody knows and the lease keeps naming the other VM.
fn allocate_ip(mac: &str) -> Option<(String, File, bool)> {
    let prev = lease_for(mac).ok().flatten();
    let avoid = leased_ips_except(mac);
    let block = host_block()?;
    let mut cands: Vec<String> = prev
        .into_iter()
        .filter(|ip| ip.starts_with(&format!("{block}.")))
        .collect();
    let taken_by_its_twin = cands
        .first()
        .is_some_and(|ip| try_flock(&ips_dir().join(ip)).is_none());
    for n in 2..=254 {
        cands.push(format!("{block}.{n}"));
    }
    let dir = ips_dir();
    for pass in 0..2 {
        for ip in &cands {
            if !ip.starts_with("127.") || (pass == 0 && avoid.contains(ip)) {
                continue;
            }
            let Some(lock) = try_flock(&dir.join(ip)) else {
                continue;
            };
            let addr: SocketAddr = format!("{ip}:22").parse().ok()?;
            if TcpListener::bind(addr).is_err() {
                continue;
            }
            crate::netfault::allow(ip);
            return Some((ip.clone(), lock, pass == 0 && !taken_by_its_twin));
        }
    }
    None
}

/// Tart's hint on the VM limit names only the running VMs it can see: those of its own
/// TART_HOME (and any kind, Linux guests included).
fn limit_error(home: &Path, name: &str) -> Fail {
    let others: Vec<String> = cmds::local_vms(home)
        .into_iter()
        .filter(|n| n != name && running_pid(&vm_dir(home, n)).is_some())
        .collect();
    let hint = if others.is_empty() {
        String::new()
    } else {
        format!(" (other running VMs: {})", others.join(", "))
    };
    Fail::Bare(
        format!("The number of VMs exceeds the system limit{hint}"),
        1,
    )
}

/// The simulated Mac's macOS major version and Apple chip generation (M1 = 1), from
/// `$TART_SIM_HOST/hardware.json` (`{"macos": 14, "chip": 2}`); a macOS 26 M4 by default.
fn host_hardware() -> (u64, u64) {
    let v: serde_json::Value = fs::read(sim_host().join("hardware.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (
        v["macos"].as_u64().unwrap_or(26),
        v["chip"].as_u64().unwrap_or(4),
    )
}

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for &x in sigs {
            libc::sigaddset(&mut s, x);
        }
        s
    }
}

fn sigwait_timeout(set: &libc::sigset_t, ms: u64) -> i32 {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as _,
    };
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) }
}

fn sshd_config(ip: &str, user: &str, reject: bool, darwin: bool) -> String {
    let allow = if reject { "tart-sim-nobody" } else { user };
    let mut s = format!(
        "# tart-sim guest sshd\nListenAddress {ip}:22\nHostKey /run/tart-sim/ssh_host_ed25519_key\nPidFile none\n\
         PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\n\
         AllowUsers {allow}\nMaxSessions 64\nMaxStartups 200:30:400\nStrictModes no\nUseDNS no\nPrintMotd no\n\
         LoginGraceTime 30\nAcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\n"
    );
    if darwin {
        s.push_str(&format!("SetEnv PATH={}\n", macos_guest::SSHD_PATH));
    }
    s
}

fn write_run_record(dir: &Path, v: serde_json::Value) {
    let tmp = dir.join("sim-run.json.tmp");
    if fs::write(&tmp, serde_json::to_vec(&v).unwrap()).is_ok() {
        let _ = fs::rename(&tmp, dir.join("sim-run.json"));
    }
}

fn prepare_guest_dir(gdir: &Path, uid: u32, gid: u32, sim: &SimVm) -> std::io::Result<()> {
    let authorized_keys = &sim.authorized_keys;
    for (d, mode) in [
        ("home", 0o750),
        ("tmp", 0o1777),
        ("var-tmp", 0o1777),
        ("Volumes", 0o755),
        ("run", 0o755),
    ] {
        let p = gdir.join(d);
        let fresh = !p.exists();
        fs::create_dir_all(&p)?;
        if fresh || d != "home" {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
        if d == "home" && fresh && sim.os == "darwin" {
            macos_guest::populate_home(&p, uid, gid, sim.homebrew)?;
        } else if d == "home" && fresh {
            let _ = Command::new("cp")
                .arg("-a")
                .arg("/etc/skel/.")
                .arg(&p)
                .status();
            let _ = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&p)
                .status();
        }
    }
    std::os::unix::fs::chown(gdir.join("home"), Some(uid), Some(gid))?;
    if !authorized_keys.is_empty() {
        let ssh = gdir.join("home/.ssh");
        fs::create_dir_all(&ssh)?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
        let keys = ssh.join("authorized_keys");
        fs::write(&keys, authorized_keys.join("\n") + "\n")?;
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(&ssh, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(&keys, Some(uid), Some(gid))?;
    }
    let key = gdir.join("ssh_host_ed25519_key");
    if !key.exists() {
        let st = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tart-sim-guest",
                "-f",
            ])
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err(std::io::Error::other("ssh-keygen failed"));
        }
    }
    Ok(())
}

pub fn run(args: &[String]) -> R<()> {
    let p = parse(&RUN, args)?;
    let name = p.pos[0].clone();
    // Validation (usage errors first, as swift-argument-parser's validate()).
    let nets = [
        p.has("net-bridged"),
        p.has("net-softnet")
            || p.has("net-softnet-allow")
            || p.has("net-softnet-block")
            || p.has("net-softnet-expose")
            || p.has("net-softnet-control-fd"),
        p.has("net-host"),
    ];
    if nets.iter().filter(|x| **x).count() > 1 {
        return Err(usage_error(
            &RUN,
            "--net-bridged, --net-softnet and --net-host are mutually exclusive",
        ));
    }
    if p.has("graphics") && p.has("no-graphics") {
        return Err(usage_error(
            &RUN,
            "--graphics and --no-graphics are mutually exclusive",
        ));
    }
    if p.has("vnc") && p.has("vnc-experimental") {
        return Err(usage_error(
            &RUN,
            "--vnc and --vnc-experimental are mutually exclusive",
        ));
    }
    if p.has("nested") {
        let (macos, chip) = host_hardware();
        if macos < 15 {
            return Err(usage_error(
                &RUN,
                "Nested virtualization is supported on hosts starting with macOS 15 (Sequoia), and later.",
            ));
        }
        if chip < 3 {
            return Err(usage_error(
                &RUN,
                "Nested virtualization is available for Mac with the M3 chip, and later.",
            ));
        }
    }
    for d in p.all("disk") {
        if d.ends_with("-amd64.iso") {
            return Err(usage_error(&RUN, "Seems like you are trying to boot an ISO for a different architecture (amd64), please use an arm64 ISO"));
        }
    }
    let shares = group_shares(&RUN, &p.all("dir"))?;
    if p.has("net-bridged") {
        let v = p.all("net-bridged");
        return Err(usage_error(
            &RUN,
            format!(
                "no bridge interfaces matched \"{:?}\", available interfaces: []",
                v
            ),
        ));
    }
    let home = tart_home()?;
    // `run` opens the VM during validation: a missing VM is kind B here.
    let dir = vm_dir(&home, &name);
    if name.contains('/') || !dir.is_dir() {
        return Err(Fail::Error(format!(
            "the specified VM \"{name}\" does not exist"
        )));
    }
    let dir = match open_vm(&home, &name) {
        Ok(d) => d,
        Err(Fail::Bare(m, _)) => return Err(Fail::Error(m)),
        Err(e) => return Err(e),
    };
    let mut cfg = read_config(&dir)?;
    let os = cmds::cfg_os(&cfg);
    let darwin = os == "darwin";
    if p.has("suspendable") && !darwin {
        return Err(usage_error(&RUN, "You can only suspend macOS VMs"));
    }
    if cfg.get("diskFormat").and_then(|v| v.as_str()) == Some("asif") {
        return Err(usage_error(
            &RUN,
            "Disk format 'asif' is not supported on this system.",
        ));
    }
    if nets[1] {
        let Some(softnet) = which("softnet") else {
            return Err(Fail::Error(
                "InitializationFailed(why: \"softnet not found in PATH\")".into(),
            ));
        };
        crate::softnet::check_privileges(&softnet)?;
    }
    if p.has("nested") && darwin {
        return Err(Fail::Bare(
            "macOS virtual machines do not support nested virtualization".into(),
            1,
        ));
    }
    gc_tmp_run(&home);
    let sim = SimVm::load(&dir, &os);

    // MAC collision with another running VM.
    let mac = cmds::cfg_mac(&cfg);
    let clash = cmds::local_vms(&home)
        .into_iter()
        .filter(|n| *n != name)
        .any(|n| {
            let d = vm_dir(&home, &n);
            running_pid(&d).is_some()
                && read_config(&d)
                    .map(|c| cmds::cfg_mac(&c) == mac)
                    .unwrap_or(false)
        });
    if clash {
        println!("There is already a running VM with the same MAC address!");
        println!("Resetting VM to assign a new MAC address...");
        cfg.insert("macAddress".into(), json!(random_mac()));
        write_config(&dir, &cfg)?;
    }
    let mac = cmds::cfg_mac(&cfg);

    // Lock config.json: this process now *is* the running VM.
    let Some(_vm_lock) = fcntl_lock(&dir.join("config.json")) else {
        return Err(Fail::Bare(format!("VM \"{name}\" is already running!"), 2));
    };
    let _ = fs::remove_file(dir.join("sim-run.json"));

    if sim.faults.run_dies {
        if let Some(ms) = sim.faults.run_dies_after_ms {
            let set = sigset(&[libc::SIGINT]);
            unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            if sigwait_timeout(&set, ms) == libc::SIGINT {
                println!("Stopping VM...");
                return Ok(());
            }
        }
        let msg = sim.faults.run_dies_message.clone().unwrap_or_else(|| {
            "Error Domain=VZErrorDomain Code=1 \"Internal Virtualization error. The virtual machine failed to start.\" UserInfo={NSLocalizedFailure=Internal Virtualization error., NSLocalizedFailureReason=The virtual machine failed to start.}".into()
        });
        return Err(Fail::Bare(msg, 1));
    }
    for s in shares.values().flatten() {
        if !Path::new(&s.path).is_dir() {
            return Err(Fail::Bare(
                format!("Error Domain=VZErrorDomain Code=2 \"A directory sharing device configuration is invalid.\" UserInfo={{NSLocalizedFailure=Invalid virtual machine configuration., NSFilePath={}}}", s.path),
                1,
            ));
        }
    }
    let _slot = if darwin {
        Some(crate::vz::take_macos_slot(&name).ok_or_else(|| limit_error(&home, &name))?)
    } else {
        None
    };
    let sim_err = |m: String| Fail::Bare(format!("tart-sim: {m}"), 1);
    let Some((uid, gid, user_home)) = user_info(&sim.user) else {
        return Err(sim_err(format!(
            "the guest user \"{}\" of this image does not exist on this host; create it with tests/bed/setup-guest-users.sh (as root)",
            sim.user
        )));
    };
    if !Path::new("/usr/sbin/sshd").exists() {
        return Err(sim_err(
            "/usr/sbin/sshd is missing; install openssh-server".into(),
        ));
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err(sim_err(
            "tart run must run as root (guests are sshd processes in their own namespaces)".into(),
        ));
    }
    let Some((ip, _ip_lock, pool_has_room)) = allocate_ip(&mac) else {
        return Err(sim_err(
            "no free loopback address with port 22 (is the host's sshd listening on 0.0.0.0:22? stop it)".into(),
        ));
    };
    let gdir = dir.join("guest");
    if darwin {
        macos_guest::check_host().map_err(sim_err)?;
    }
    prepare_guest_dir(&gdir, uid, gid, &sim)
        .map_err(|e| sim_err(format!("preparing the guest: {e}")))?;
    for d in ["/Volumes", "/run/sshd", "/run/tart-sim", &user_home] {
        let _ = fs::create_dir_all(d);
    }
    let plan = Plan {
        darwin,
        user: sim.user.clone(),
        user_home: user_home.clone(),
        uid,
        gid,
        guest_dir: gdir.to_string_lossy().into_owned(),
        sshd_config: sshd_config(&ip, &sim.user, sim.faults.reject_logins, darwin),
        shares,
        homebrew: sim.homebrew,
        softnet: nets[1],
        boot_delay_ms: sim.faults.boot_delay_ms,
    };
    let plan_path = gdir.join("plan.json");
    fs::write(&plan_path, serde_json::to_vec_pretty(&plan).unwrap())
        .map_err(|e| sim_err(e.to_string()))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(gdir.join("console.log"))
        .map_err(|e| sim_err(e.to_string()))?;

    // Signals: SIGINT/SIGUSR1/SIGUSR2/SIGCHLD are handled synchronously; SIGTERM/SIGHUP
    // keep their disposition (kill us; the guest dies with us through PDEATHSIG).
    let set = sigset(&[libc::SIGINT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCHLD]);
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    // Softnet's helper thread must exist before this process leaves its PID namespace.
    let network = nets[1].then(crate::softnet::Network::start);
    // Every child from here on lands in a fresh PID namespace; the first one is its init.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(sim_err(format!(
            "unshare(CLONE_NEWPID): {}",
            std::io::Error::last_os_error()
        )));
    }
    let exe = std::env::current_exe().map_err(|e| sim_err(e.to_string()))?;
    // As on a Mac, a process listing shows each VM as Virtualization's VM process.
    let init = if crate::vz::vm_processes_hidden() {
        exe.clone()
    } else {
        crate::vz::vm_process_exe(&exe).map_err(sim_err)?
    };
    let mut cmd = Command::new(init);
    cmd.arg("__guest-init").arg(&plan_path).stdin(Stdio::null());
    cmd.stdout(log.try_clone().map_err(|e| sim_err(e.to_string()))?);
    cmd.stderr(log);
    let namespaces = if nets[1] {
        libc::CLONE_NEWNS | libc::CLONE_NEWNET
    } else {
        libc::CLONE_NEWNS
    };
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::unshare(namespaces) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| sim_err(format!("starting the guest: {e}")))?;
    let init = child.id() as i32;
    let me = std::process::id();
    write_run_record(
        &dir,
        json!({"pid": me, "init_pid": init, "ip": ip, "ready": false, "started": crate::util::now_secs()}),
    );

    let start = Instant::now();
    let boot = Duration::from_millis(sim.faults.boot_delay_ms);
    let dies = sim.faults.guest_dies_after_ms.map(Duration::from_millis);
    let mut ready = false;
    let mut shutdown_requested = false;
    let addr: SocketAddr = format!("{ip}:22").parse().unwrap();
    if let Some(network) = &network {
        network
            .serve(init, addr)
            .map_err(|e| sim_err(format!("Softnet relay on {addr}: {e}")))?;
    }
    let port_open = |addr: SocketAddr| match &network {
        Some(network) => network.guest_port_open(addr),
        None => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    };
    let mut out = std::io::stdout();
    loop {
        let sig = sigwait_timeout(&set, 50);
        match sig {
            libc::SIGINT => {
                let _ = writeln!(out, "Stopping VM...");
                let _ = out.flush();
                // First, while `tart stop` is still patient: its SIGKILL would leave the rule.
                if sim.faults.local_network_denied {
                    crate::netfault::allow(&ip);
                }
                unsafe { libc::kill(init, libc::SIGKILL) };
                reap(init);
                let _ = fs::remove_file(dir.join("sim-run.json"));
                return Ok(());
            }
            libc::SIGUSR2 => {
                let _ = writeln!(out, "Requesting guest OS to stop...");
                let _ = out.flush();
                unsafe { libc::kill(init, libc::SIGTERM) };
                shutdown_requested = true;
            }
            libc::SIGUSR1 => {
                let _ = writeln!(
                    out,
                    "Failed to suspend the VM: the VM was not started with --suspendable"
                );
                let _ = out.flush();
                // First, while `tart stop` is still patient: its SIGKILL would leave the rule.
                if sim.faults.local_network_denied {
                    crate::netfault::allow(&ip);
                }
                unsafe { libc::kill(init, libc::SIGKILL) };
                reap(init);
                let _ = fs::remove_file(dir.join("sim-run.json"));
                return Err(Fail::Exit(1));
            }
            _ => {}
        }
        let mut status = 0;
        let r = unsafe { libc::waitpid(init, &mut status, libc::WNOHANG) };
        if r == init {
            let _ = fs::remove_file(dir.join("sim-run.json"));
            if sim.faults.local_network_denied {
                crate::netfault::allow(&ip);
            }
            let unexpected =
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 && !shutdown_requested;
            if unexpected || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 4) {
                eprintln!(
                    "tart-sim: the guest's sshd exited unexpectedly, see {}",
                    gdir.join("console.log").display()
                );
            }
            let _ = writeln!(out, "guest has stopped the virtual machine");
            let _ = out.flush();
            return Ok(());
        }
        let el = start.elapsed();
        if !ready && el >= boot && port_open(addr) {
            ready = true;
            if !sim.faults.never_ip && pool_has_room {
                write_lease(&name, &mac, &ip);
            }
            if sim.faults.local_network_denied {
                if let Err(e) = crate::netfault::deny(&ip) {
                    eprintln!("tart-sim: {e}");
                }
            }
            write_run_record(
                &dir,
                json!({"pid": me, "init_pid": init, "ip": ip, "ready": true, "started": crate::util::now_secs() - el.as_secs() as i64}),
            );
        }
        if let Some(d) = dies {
            if el >= d && !shutdown_requested {
                shutdown_requested = true;
                unsafe { libc::kill(init, libc::SIGTERM) };
            }
        }
    }
}

fn reap(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || r < 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gc_tmp_run(home: &Path) {
    cmds::gc_tmp(home);
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

// ---------- the guest's init (PID 1 of the guest's PID namespace) ----------

fn mnt(
    src: Option<&str>,
    dst: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (s, t, d) = (src.map(c), fstype.map(c), data.map(c));
    let dc = c(dst);
    let r = unsafe {
        libc::mount(
            s.as_ref().map(|x| x.as_ptr()).unwrap_or(std::ptr::null()),
            dc.as_ptr(),
            t.as_ref().map(|x| x.as_ptr()).unwrap_or(std::ptr::null()),
            flags,
            d.as_ref()
                .map(|x| x.as_ptr() as *const libc::c_void)
                .unwrap_or(std::ptr::null()),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {:?} on {dst}: {}",
            src,
            std::io::Error::last_os_error()
        ))
    }
}

fn bind(src: &str, dst: &str, ro: bool) -> Result<(), String> {
    mnt(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    if ro {
        mnt(
            None,
            dst,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// A user namespace whose uid/gid maps swap `host_*` and `guest_*` (identity otherwise),
/// for an idmapped mount that shows the host owner's files as the guest user's.
fn swap_userns(
    host_uid: u32,
    guest_uid: u32,
    host_gid: u32,
    guest_gid: u32,
) -> Result<File, String> {
    fn map(a: u32, b: u32) -> String {
        if a == b {
            return "0 0 4294967295\n".into();
        }
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut s = format!("{a} {b} 1\n{b} {a} 1\n");
        if lo > 0 {
            s.push_str(&format!("0 0 {lo}\n"));
        }
        if hi - lo > 1 {
            s.push_str(&format!("{} {} {}\n", lo + 1, lo + 1, hi - lo - 1));
        }
        s.push_str(&format!(
            "{} {} {}\n",
            hi + 1,
            hi + 1,
            4294967295u64 - hi - 1
        ));
        s
    }
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err("pipe".into());
    }
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork".into());
    }
    if pid == 0 {
        unsafe {
            libc::close(fds[1]);
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(1);
            }
            let mut b = [0u8; 1];
            libc::read(fds[0], b.as_mut_ptr() as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    unsafe { libc::close(fds[0]) };
    // Wait (bounded) until the child is in its own user namespace.
    let own = fs::read_link("/proc/self/ns/user").ok();
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::read_link(format!("/proc/{pid}/ns/user")).ok() == own && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = (|| -> Result<File, String> {
        fs::write(format!("/proc/{pid}/uid_map"), map(host_uid, guest_uid))
            .map_err(|e| format!("uid_map: {e}"))?;
        fs::write(format!("/proc/{pid}/gid_map"), map(host_gid, guest_gid))
            .map_err(|e| format!("gid_map: {e}"))?;
        File::open(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())
    })();
    unsafe {
        libc::close(fds[1]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    r
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Bind-mounts `src` on `dst` with the host owner's ids shown as the guest user's.
fn idmapped_bind(
    src: &str,
    dst: &str,
    ro: bool,
    guest_uid: u32,
    guest_gid: u32,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let md = fs::metadata(src).map_err(|e| e.to_string())?;
    let userns = swap_userns(md.uid(), guest_uid, md.gid(), guest_gid)?;
    let csrc = std::ffi::CString::new(src).unwrap();
    let cdst = std::ffi::CString::new(dst).unwrap();
    let empty = std::ffi::CString::new("").unwrap();
    const OPEN_TREE_CLONE: u32 = 1;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            csrc.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
        )
    };
    if tree < 0 {
        return Err(format!("open_tree: {}", std::io::Error::last_os_error()));
    }
    let tree = tree as i32;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if ro { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        unsafe { libc::close(tree) };
        return Err(format!("mount_setattr: {e}"));
    }
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            cdst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    let e = std::io::Error::last_os_error();
    unsafe { libc::close(tree) };
    if r != 0 {
        return Err(format!("move_mount: {e}"));
    }
    Ok(())
}

/// A share as the guest sees it: idmapped when the kernel allows, else a plain bind.
fn share_bind(src: &str, dst: &str, ro: bool, uid: u32, gid: u32) -> Result<(), String> {
    match idmapped_bind(src, dst, ro, uid, gid) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!(
                "tart-sim guest init: no idmapped mount for {src} ({e}); files keep host ownership"
            );
            bind(src, dst, ro)
        }
    }
}

const MOUNT_VIRTIOFS_LINUX: &str = r#"#!/bin/sh
# tart-sim: in a simulated guest, a virtiofs share is a bind mount of the share that
# `tart run` staged under /run/tart-sim/shares/<tag>.
tag=""; dir=""; ro=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) case ",$2," in *,ro,*) ro=1;; esac; shift 2;;
    -o*) case ",${1#-o}," in *,ro,*) ro=1;; esac; shift;;
    -*) shift;;
    *) if [ -z "$tag" ]; then tag="$1"; else dir="$1"; fi; shift;;
  esac
done
src="/run/tart-sim/shares/$tag"
if [ -z "$tag" ] || [ -z "$dir" ] || [ ! -d "$src" ]; then
  echo "mount: $dir: wrong fs type, bad option, bad superblock on $tag, missing codepage or helper program, or other error." >&2
  exit 32
fi
mount --rbind "$src" "$dir" || exit 32
if [ -n "$ro" ]; then mount -o remount,bind,ro "$dir" || exit 32; fi
exit 0
"#;

const MOUNT_VIRTIOFS_DARWIN: &str = r#"#!/bin/sh
# tart-sim: macOS's mount_virtiofs [-o options] <tag> <mountpoint>, simulated with a
# bind mount of the share staged under /run/tart-sim/shares/<tag>.
if [ "$(id -u)" != 0 ]; then exec sudo -n "$0" "$@"; fi
ro=""
while getopts o: opt; do case "$opt" in o) case ",$OPTARG," in *,ro,*|*,rdonly,*) ro=1;; esac;; *) echo "usage: mount_virtiofs [-o options] tag mountpoint" >&2; exit 64;; esac; done
shift $((OPTIND - 1))
tag="$1"; dir="$2"
src="/run/tart-sim/shares/$tag"
if [ -z "$tag" ] || [ -z "$dir" ]; then echo "usage: mount_virtiofs [-o options] tag mountpoint" >&2; exit 64; fi
if [ ! -d "$src" ]; then echo "mount_virtiofs: failed to mount $dir: No such file or directory" >&2; exit 71; fi
mount --rbind "$src" "$dir" || exit 71
if [ -n "$ro" ]; then mount -o remount,bind,ro "$dir" || exit 71; fi
exit 0
"#;

pub fn guest_init(args: &[String]) -> R<()> {
    let fail = |m: String| -> Fail {
        eprintln!("tart-sim guest init: {m}");
        Fail::Exit(4)
    };
    let plan_path = args.first().ok_or_else(|| fail("no plan".into()))?;
    let plan: Plan = serde_json::from_slice(&fs::read(plan_path).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    let set = sigset(&[
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGCHLD,
    ]);
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let g = PathBuf::from(&plan.guest_dir);
    let gs = |s: &str| g.join(s).to_string_lossy().into_owned();
    mnt(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(fail)?;
    let _ = mnt(
        Some("proc"),
        "/proc",
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
    let run = gs("run");
    mnt(Some("tmpfs"), &run, Some("tmpfs"), 0, Some("mode=755")).map_err(fail)?;
    let io = |e: std::io::Error| fail(e.to_string());
    for d in ["shares", "sbin-upper", "sbin-work"] {
        fs::create_dir_all(g.join("run").join(d)).map_err(io)?;
    }
    fs::copy(
        g.join("ssh_host_ed25519_key"),
        g.join("run/ssh_host_ed25519_key"),
    )
    .map_err(io)?;
    fs::set_permissions(
        g.join("run/ssh_host_ed25519_key"),
        fs::Permissions::from_mode(0o600),
    )
    .map_err(io)?;
    fs::write(g.join("run/sshd_config"), &plan.sshd_config).map_err(io)?;
    for (f, body) in [
        ("mount.virtiofs", MOUNT_VIRTIOFS_LINUX),
        ("mount_virtiofs", MOUNT_VIRTIOFS_DARWIN),
    ] {
        let p = g.join("run/sbin-upper").join(f);
        fs::write(&p, body).map_err(io)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    // Stage every share under run/shares/<tag>, with read-only honoured.
    for (tag, shares) in &plan.shares {
        let base = g.join("run/shares").join(tag.replace('/', "_"));
        fs::create_dir_all(&base).map_err(io)?;
        let base_s = base.to_string_lossy().into_owned();
        if shares.len() == 1 && shares[0].name.is_none() {
            share_bind(&shares[0].path, &base_s, shares[0].ro, plan.uid, plan.gid).map_err(fail)?;
        } else {
            for s in shares {
                let n = s.name.clone().unwrap_or_default().replace('/', "_");
                let t = base.join(&n);
                fs::create_dir_all(&t).map_err(io)?;
                share_bind(&s.path, &t.to_string_lossy(), s.ro, plan.uid, plan.gid)
                    .map_err(fail)?;
            }
        }
    }
    bind(&run, "/run/tart-sim", false).map_err(fail)?;
    if let Err(e) = mnt(
        Some("overlay"),
        "/usr/sbin",
        Some("overlay"),
        0,
        Some(
            "lowerdir=/usr/sbin,upperdir=/run/tart-sim/sbin-upper,workdir=/run/tart-sim/sbin-work",
        ),
    ) {
        eprintln!("tart-sim guest init: no mount helpers in the guest: {e}");
    }
    bind(&gs("home"), &plan.user_home, false).map_err(fail)?;
    if plan.darwin {
        macos_guest::Mounts {
            run: &g.join("run"),
            user: &plan.user,
            homebrew: plan.homebrew,
        }
        .apply(
            |src, dst| bind(src, dst, false),
            |lower, upper, work| {
                let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
                mnt(Some("overlay"), lower, Some("overlay"), 0, Some(&opts))
            },
        )
        .map_err(fail)?;
    }
    bind(&gs("var-tmp"), "/var/tmp", false).map_err(fail)?;
    bind(&gs("Volumes"), "/Volumes", false).map_err(fail)?;
    bind(&gs("tmp"), "/tmp", false).map_err(fail)?;
    if plan.darwin {
        if plan.shares.contains_key(DEFAULT_TAG) {
            let msf = "/Volumes/My Shared Files";
            fs::create_dir_all(msf).map_err(io)?;
            bind(&format!("/run/tart-sim/shares/{DEFAULT_TAG}"), msf, false).map_err(fail)?;
        } else {
            let _ = fs::remove_dir("/Volumes/My Shared Files");
        }
    }
    let _ = plan.user;
    if plan.softnet {
        crate::softnet::loopback_up().map_err(fail)?;
    }
    std::thread::sleep(std::time::Duration::from_millis(plan.boot_delay_ms));
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", "/run/tart-sim/sshd_config"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("starting sshd: {e}")))?;
    let sshd_pid = sshd.id() as i32;
    loop {
        let sig = sigwait_timeout(&set, 1000);
        if sig > 0 && sig != libc::SIGCHLD {
            // A shutdown request (or the guest's own death): everything in the guest goes.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
            std::process::exit(0);
        }
        loop {
            let mut st = 0;
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == sshd_pid {
                unsafe { libc::kill(-1, libc::SIGKILL) };
                while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
                std::process::exit(3);
            }
        }
    }
}

// ---------- tart exec ----------

pub fn exec_in_guest(init: i32, sim: &SimVm, cmd: &[String], interactive: bool) -> R<()> {
    let Some((uid, gid, home)) = user_info(&sim.user) else {
        return Err(Fail::Error(format!("user: unknown user {}", sim.user)));
    };
    let open = |ns: &str| File::open(format!("/proc/{init}/ns/{ns}"));
    let (Ok(mntns), Ok(pidns), Ok(netns)) = (open("mnt"), open("pid"), open("net")) else {
        return Err(Fail::Bare(
            format!("VM is not running (guest init {init} is gone)"),
            2,
        ));
    };
    use std::os::unix::io::AsRawFd;
    unsafe {
        if libc::setns(pidns.as_raw_fd(), libc::CLONE_NEWPID) != 0
            || libc::setns(mntns.as_raw_fd(), libc::CLONE_NEWNS) != 0
            || libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0
        {
            return Err(Fail::Error(format!(
                "tart-sim: entering the guest: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let path = if sim.os == "darwin" {
        "/bin:/usr/bin:/usr/sbin:/usr/local/bin:/opt/homebrew/bin"
    } else {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    };
    let cuser = std::ffi::CString::new(sim.user.clone()).unwrap();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("USER", &sim.user)
        .env("LOGNAME", &sim.user)
        .env("LANG", "C.UTF-8")
        .current_dir(&home)
        .stdin(if interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    // A launchd agent's environment need not name the user's shell: callers must not rely
    // on SHELL in macOS guests.
    if sim.os != "darwin" {
        c.env("SHELL", "/bin/bash");
    }
    unsafe {
        c.pre_exec(move || {
            if libc::initgroups(cuser.as_ptr(), gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Fail::Error(format!(
                "exec: \"{}\": executable file not found in $PATH",
                cmd[0]
            )))
        }
        Err(e) => return Err(Fail::Error(format!("fork/exec {}: {}", cmd[0], e))),
    };
    let st = match sim.faults.exec_breaks_after_ms {
        None => child.wait().map_err(|e| Fail::Error(e.to_string()))?,
        Some(ms) => {
            let deadline = Instant::now() + Duration::from_millis(ms);
            loop {
                if let Some(st) = child.try_wait().map_err(|e| Fail::Error(e.to_string()))? {
                    break st;
                }
                if Instant::now() >= deadline {
                    // The agent's gRPC stream breaks: the agent's command dies with its
                    // context, and Tart prints the gRPC status as any other error.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Fail::Error(
                        "unavailable (14): Transport became inactive".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Err(Fail::Exit(match st.code() {
        Some(c) => c,
        None => {
            let _ = st.signal();
            255
        }
    }))
}
