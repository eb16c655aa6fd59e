//! Bridge to the Tart simulator (`tart` binary of workspace member `tests/tart-sim`).
//!
//! A [`SimHost`] owns a temp dir with its own `TART_HOME` (holding `catalogue.json`),
//! `TART_SIM_HOST`, and a `bin/` dir whose `tart` is a symlink to the simulator. Dropping it
//! stops and deletes every VM under that `TART_HOME`, so tests never leak guests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Registry credentials an image requires for `pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// One `tart` command the simulator ran (see [`SimHost::invocations`]).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub pid: u32,
    pub started_ms: u128,
    /// None while it runs (or if it was killed).
    pub ended_ms: Option<u128>,
    pub args: Vec<String>,
}

/// Fault knobs of a catalogue image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    pub boot_delay_ms: u64,
    pub never_ip: bool,
    pub run_dies: bool,
    pub run_dies_message: Option<String>,
    pub guest_dies_after_ms: Option<u64>,
    pub reject_logins: bool,
    pub pull_fails: bool,
    pub pull_refuses_credentials: bool,
    pub clone_fails_disk: bool,
    /// macOS 15+ Local Network privacy: connections from the host to the guest fail with
    /// "No route to host" once it has its IP (needs iptables).
    #[serde(default)]
    pub local_network_denied: bool,
    /// The guest agent's stream breaks this long into every `tart exec`.
    #[serde(default)]
    pub exec_breaks_after_ms: Option<u64>,
    /// The guest agent answers only this long after `tart run` started.
    #[serde(default)]
    pub agent_starts_after_ms: Option<u64>,
    /// With `run_dies`: Virtualization reports the failed start only this long after
    /// `tart run` began (a start can fail late); `tart stop` ends it before.
    #[serde(default)]
    pub run_dies_after_ms: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            boot_delay_ms: 300,
            never_ip: false,
            run_dies: false,
            run_dies_message: None,
            guest_dies_after_ms: None,
            reject_logins: false,
            pull_fails: false,
            pull_refuses_credentials: false,
            clone_fails_disk: false,
            local_network_denied: false,
            exec_breaks_after_ms: None,
            agent_starts_after_ms: None,
            run_dies_after_ms: None,
        }
    }
}

/// One catalogue entry (an OCI image the simulated registry serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `darwin` or `linux`.
    pub os: String,
    pub user: String,
    pub password: String,
    /// Guest agent installed (`tart exec` works).
    pub agent: bool,
    pub pull_ms: u64,
    pub size_bytes: u64,
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub registry_auth: Option<RegistryAuth>,
    pub faults: Faults,
    /// Public keys baked into the user's `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// The image's own minimum (`cpuCountMin`, `memorySizeMin`); None: the simulator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_min_mib: Option<u64>,
    /// Homebrew in /opt/homebrew with a gitlab-runner, on PATH only through the user's
    /// ~/.zprofile (macOS images).
    #[serde(default)]
    pub homebrew: bool,
    /// The image's digest (64 hex); by default derived from the entry, so two entries
    /// that differ only in a fault knob are different images with different MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Image {
    fn base(os: &str) -> Image {
        Image {
            os: os.into(),
            user: "admin".into(),
            password: "admin".into(),
            agent: false,
            pull_ms: 200,
            size_bytes: 25_300_000_000,
            cpu: 4,
            memory_mib: 8192,
            disk_gb: 50,
            registry_auth: None,
            faults: Faults::default(),
            authorized_keys: Vec::new(),
            cpu_min: None,
            memory_min_mib: None,
            digest: None,
            homebrew: false,
        }
    }
    /// A macOS image (counts toward Apple's 2-VM limit), `admin`/`admin`.
    pub fn darwin() -> Image {
        Image::base("darwin")
    }
    pub fn linux() -> Image {
        Image::base("linux")
    }
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = user.into();
        self.password = password.into();
        self
    }
    /// Bakes a public key into the image user's `authorized_keys`.
    pub fn authorized_key(mut self, key: impl Into<String>) -> Self {
        self.authorized_keys.push(key.into());
        self
    }
    /// The image's minimum CPU count and memory, as its `config.json` declares them.
    pub fn minimum(mut self, cpu: u32, memory_mib: u64) -> Self {
        self.cpu_min = Some(cpu);
        self.memory_min_mib = Some(memory_mib);
        self
    }
    /// Homebrew (and a gitlab-runner in it) whose PATH only `~/.zprofile` adds, as
    /// Homebrew's installer leaves a macOS user.
    pub fn homebrew(mut self) -> Self {
        self.homebrew = true;
        self
    }
    /// Fixes the image's digest, so that entries in different catalogues (or with
    /// different fault knobs) are the same image, with the same MAC address.
    pub fn digest(mut self, hex64: impl Into<String>) -> Self {
        self.digest = Some(hex64.into());
        self
    }
    pub fn agent(mut self, on: bool) -> Self {
        self.agent = on;
        self
    }
    pub fn pull_ms(mut self, ms: u64) -> Self {
        self.pull_ms = ms;
        self
    }
    pub fn size_bytes(mut self, n: u64) -> Self {
        self.size_bytes = n;
        self
    }
    pub fn resources(mut self, cpu: u32, memory_mib: u64, disk_gb: u64) -> Self {
        self.cpu = cpu;
        self.memory_mib = memory_mib;
        self.disk_gb = disk_gb;
        self
    }
    pub fn registry_auth(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.registry_auth = Some(RegistryAuth {
            username: username.into(),
            password: password.into(),
        });
        self
    }
    pub fn boot_delay_ms(mut self, ms: u64) -> Self {
        self.faults.boot_delay_ms = ms;
        self
    }
    pub fn never_ip(mut self) -> Self {
        self.faults.never_ip = true;
        self
    }
    pub fn run_dies(mut self, message: Option<&str>) -> Self {
        self.faults.run_dies = true;
        self.faults.run_dies_message = message.map(String::from);
        self
    }
    pub fn guest_dies_after_ms(mut self, ms: u64) -> Self {
        self.faults.guest_dies_after_ms = Some(ms);
        self
    }
    pub fn reject_logins(mut self) -> Self {
        self.faults.reject_logins = true;
        self
    }
    pub fn pull_fails(mut self) -> Self {
        self.faults.pull_fails = true;
        self
    }
    pub fn pull_refuses_credentials(mut self) -> Self {
        self.faults.pull_refuses_credentials = true;
        self
    }
    pub fn clone_fails_disk(mut self) -> Self {
        self.faults.clone_fails_disk = true;
        self
    }
    /// Edit the fault knobs in place.
    pub fn faults(mut self, f: impl FnOnce(&mut Faults)) -> Self {
        f(&mut self.faults);
        self
    }
}

/// `$TART_HOME/catalogue.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    pub images: BTreeMap<String, Image>,
}

/// One row of `tart list --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Source")]
    pub source: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Running", default)]
    pub running: bool,
}

/// What a test left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    /// Local VMs still present (`name (state)`).
    pub vms: Vec<String>,
    /// `(pid, cmdline)` of live processes that mention the TART_HOME or the job marker.
    pub processes: Vec<(u32, String)>,
    /// Entries left in the given directory.
    pub files: Vec<PathBuf>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty() && self.processes.is_empty() && self.files.is_empty()
    }
    #[track_caller]
    pub fn assert_none(&self) {
        assert!(self.is_empty(), "left behind: {self:#?}");
    }
}

/// How `softnet` is installed on a simulated Mac.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Softnet {
    /// On PATH, owned by root with the setuid bit: Tart runs it as root.
    SetuidRoot,
    /// On PATH, not setuid, but a passwordless sudo rule allows it.
    PasswordlessSudo,
    /// On PATH without the privileges it needs: `tart run --net-softnet` fails at once.
    Unprivileged,
    /// Not installed.
    Missing,
}

/// What `softnet` is on a simulated Mac: the simulator does Softnet's filtering itself and
/// only checks that this file is there and how it is privileged.
const SOFTNET_STAND_IN: &str = "#!/bin/sh\necho 'softnet (tart-sim stand-in: the simulator isolates guests itself)' >&2\nexit 1\n";

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A simulated Tart host for one test.
pub struct SimHost {
    root: tempfile::TempDir,
    tart_home: PathBuf,
    sim_host: PathBuf,
    bin_dir: PathBuf,
    catalogue: Catalogue,
}

/// Where the simulator binary is: `$TART_SIM_BIN`, else `target/<profile>/tart` next to the
/// running test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn simulator_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TART_SIM_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TART_SIM_BIN={} does not exist", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cands = Vec::new();
    if let Some(dir) = exe.parent() {
        cands.push(dir.join("tart"));
        if let Some(profile) = dir.parent() {
            cands.push(profile.join("tart"));
        }
    }
    cands.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "the Tart simulator binary `tart` was not found next to {} (expected target/<profile>/tart); \
             run `cargo build --workspace` (or `cargo build -p tart-sim`) first, or set TART_SIM_BIN",
            exe.display()
        )
    })
}

impl SimHost {
    /// A fresh simulated host with an empty catalogue. Panics with a clear message if the
    /// simulator was not built.
    pub fn new() -> SimHost {
        SimHost::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new() -> Result<SimHost, String> {
        let sim = simulator_path()?;
        let root = tempfile::Builder::new()
            .prefix("tart-sim-test")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let tart_home = root.path().join("tart-home");
        let sim_host = root.path().join("sim-host");
        let bin_dir = root.path().join("bin");
        for d in [&tart_home, &sim_host, &bin_dir, &root.path().join("home")] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::os::unix::fs::symlink(&sim, bin_dir.join("tart")).map_err(|e| e.to_string())?;
        // macOS's `security`, answering about the simulated login keychain.
        std::os::unix::fs::symlink(&sim, bin_dir.join("security")).map_err(|e| e.to_string())?;
        // Softnet, installed as the nix-darwin module does: on PATH, setuid root.
        let softnet = bin_dir.join("softnet");
        std::fs::write(&softnet, SOFTNET_STAND_IN).map_err(|e| e.to_string())?;
        set_mode(&softnet, 0o4755)?;
        let h = SimHost {
            root,
            tart_home,
            sim_host,
            bin_dir,
            catalogue: Catalogue::default(),
        };
        h.write_catalogue();
        Ok(h)
    }

    /// Another user of the same simulated Mac: a TART_HOME of its own, starting with a copy
    /// of this catalogue (the same images, digests and MAC addresses), and the same
    /// TART_SIM_HOST (one NAT network and DHCP lease table, one macOS-VM limit). Keep `self`
    /// alive for as long as the returned host.
    pub fn another_user(&self) -> SimHost {
        let root = tempfile::Builder::new()
            .prefix("tart-sim-test")
            .tempdir()
            .expect("temp dir");
        let tart_home = root.path().join("tart-home");
        let bin_dir = root.path().join("bin");
        for d in [&tart_home, &bin_dir] {
            std::fs::create_dir_all(d).expect("create dir");
        }
        let sim = std::fs::read_link(self.tart_path()).expect("the tart symlink");
        std::os::unix::fs::symlink(&sim, bin_dir.join("tart")).expect("symlink tart");
        std::os::unix::fs::symlink(&sim, bin_dir.join("security")).expect("symlink security");
        let other = SimHost {
            root,
            tart_home,
            sim_host: self.sim_host.clone(),
            bin_dir,
            catalogue: self.catalogue.clone(),
        };
        other.write_catalogue();
        other
    }

    /// The simulated Mac's macOS major version and Apple chip generation (M1 = 1); a
    /// macOS 26 M4 until set. Nested virtualization needs macOS 15 and an M3.
    pub fn set_hardware(&self, macos: u32, chip: u32) {
        std::fs::write(
            self.sim_host.join("hardware.json"),
            format!("{{\"macos\": {macos}, \"chip\": {chip}}}"),
        )
        .expect("write hardware.json");
    }

    /// macOS 26's stale-slot bug: `n` of Apple's two places for macOS guests stay taken
    /// with no VM in them, until the (simulated) Mac reboots.
    pub fn leave_stale_macos_slots(&self, n: u32) {
        std::fs::write(self.sim_host.join("stale-macos-slots"), n.to_string())
            .expect("write stale-macos-slots");
    }

    /// A process listing on this simulated Mac no longer shows running VMs as
    /// Virtualization's VM processes (their count reads lower than the VMs that run).
    pub fn hide_vm_processes(&self) {
        std::fs::write(self.sim_host.join("vm-processes-hidden"), "")
            .expect("write vm-processes-hidden");
    }

    /// A registry outage on this simulated Mac's network: every registry request to `host`
    /// fails as when the server cannot be reached (`rate_limited`: it answers 429 instead).
    pub fn cut_registry(&self, host: &str, rate_limited: bool) {
        let line = if rate_limited {
            format!("{host} rate-limit\n")
        } else {
            format!("{host}\n")
        };
        std::fs::write(self.sim_host.join("registry-unreachable"), line)
            .expect("write registry-unreachable");
    }

    /// How Softnet is installed on this simulated Mac (default: [`Softnet::SetuidRoot`]).
    pub fn set_softnet(&self, setup: Softnet) {
        let bin = self.bin_dir.join("softnet");
        let sudoers = self.sim_host.join("softnet-sudoers");
        let _ = std::fs::remove_file(&sudoers);
        if setup == Softnet::Missing {
            let _ = std::fs::remove_file(&bin);
            return;
        }
        std::fs::write(&bin, SOFTNET_STAND_IN).expect("softnet stand-in");
        let mode = if setup == Softnet::SetuidRoot {
            0o4755
        } else {
            0o755
        };
        set_mode(&bin, mode).expect("softnet mode");
        if setup == Softnet::PasswordlessSudo {
            std::fs::write(&sudoers, "admin ALL=(root) NOPASSWD: softnet\n").expect("sudoers");
        }
    }

    /// Add or replace a catalogue image (written at once).
    pub fn add_image(&mut self, oci_name: impl Into<String>, image: Image) -> &mut Self {
        self.catalogue.images.insert(oci_name.into(), image);
        self.write_catalogue();
        self
    }

    /// Builder form of [`SimHost::add_image`].
    pub fn with_image(mut self, oci_name: impl Into<String>, image: Image) -> Self {
        self.add_image(oci_name, image);
        self
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Edit the catalogue and rewrite it.
    pub fn edit_catalogue(&mut self, f: impl FnOnce(&mut Catalogue)) {
        f(&mut self.catalogue);
        self.write_catalogue();
    }

    fn write_catalogue(&self) {
        let text = serde_json::to_string_pretty(&self.catalogue).expect("catalogue");
        let tmp = self.tart_home.join("catalogue.json.tmp");
        std::fs::write(&tmp, text).expect("write catalogue");
        std::fs::rename(&tmp, self.tart_home.join("catalogue.json")).expect("rename catalogue");
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
    pub fn tart_home(&self) -> &Path {
        &self.tart_home
    }
    pub fn sim_host_dir(&self) -> &Path {
        &self.sim_host
    }
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
    /// The `tart` symlink.
    pub fn tart_path(&self) -> PathBuf {
        self.bin_dir.join("tart")
    }

    /// The runner user's home on this simulated Mac, as its user database has it (its
    /// `~/.docker/config.json`, its login keychain, the default `~/.tart`).
    pub fn home_dir(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// The runner user's (simulated) login keychain, where `tart login` stores credentials.
    /// Found through the user database, as on a Mac: `HOME` does not move it.
    pub fn keychain_path(&self) -> PathBuf {
        self.home_dir()
            .join("Library/Keychains/tart-sim-login-keychain.json")
    }

    /// Environment for `Runner::envs`: PATH with the simulator (and `security`) first, HOME
    /// (the runner user's own), TART_HOME, TART_SIM_HOST, TART_SIM_USER_HOME (the simulated
    /// user database's home for this user, which Tart's Foundation and Security calls use
    /// whatever HOME says) and TART_DRIVER_HOST_ROOT (the simulated Mac's root).
    pub fn env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        vec![
            ("PATH".into(), format!("{}:{path}", self.bin_dir.display())),
            (
                "TART_SIM_USER_HOME".into(),
                self.home_dir().display().to_string(),
            ),
            ("HOME".into(), self.home_dir().display().to_string()),
            ("TART_HOME".into(), self.tart_home.display().to_string()),
            ("TART_SIM_HOST".into(), self.sim_host.display().to_string()),
            // The driver finds this Mac's leases file and VM processes under it.
            (
                "TART_DRIVER_HOST_ROOT".into(),
                self.sim_host.display().to_string(),
            ),
        ]
    }

    /// Every `tart` command run on this host so far, in order (the simulator's
    /// `invocations.log`): for each, when it started and ended (if it has) and its arguments.
    pub fn invocations(&self) -> Vec<Invocation> {
        let text =
            std::fs::read_to_string(self.sim_host.join("invocations.log")).unwrap_or_default();
        let mut out: Vec<Invocation> = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let (Some(ms), Some(pid), Some(event)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(ms), Ok(pid)) = (ms.parse::<u128>(), pid.parse::<u32>()) else {
                continue;
            };
            let args: Vec<String> = parts
                .next()
                .unwrap_or("")
                .split(' ')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if event == "start" {
                out.push(Invocation {
                    pid,
                    started_ms: ms,
                    ended_ms: None,
                    args,
                });
            } else if let Some(inv) = out
                .iter_mut()
                .rev()
                .find(|i| i.pid == pid && i.ended_ms.is_none())
            {
                inv.ended_ms = Some(ms);
            }
        }
        out
    }

    /// A `Command` for `tart <args>` with this host's environment.
    pub fn command<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(
        &self,
        args: I,
    ) -> Command {
        let mut c = Command::new(self.tart_path());
        c.args(args).envs(self.env()).stdin(Stdio::null());
        c
    }

    /// Run `tart <args>` (killed after 120 s) and return its output.
    pub fn tart<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> Output {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        output_with_timeout(c, Duration::from_secs(120))
    }

    /// Run `tart <args>`, panic (with stderr) unless it exits 0; returns stdout.
    #[track_caller]
    pub fn tart_ok<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> String {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.tart(&args);
        assert!(
            out.status.success(),
            "tart {:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tart list --format json`, parsed.
    pub fn list(&self) -> Vec<VmInfo> {
        let out = self.tart(["list", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Local VMs only.
    pub fn local_vms(&self) -> Vec<VmInfo> {
        self.list()
            .into_iter()
            .filter(|v| v.source == "local")
            .collect()
    }

    pub fn running_count(&self) -> usize {
        self.local_vms()
            .iter()
            .filter(|v| v.running || v.state == "running")
            .count()
    }

    /// Stop (if running) and delete every local VM under this TART_HOME.
    pub fn stop_and_delete_all(&self) {
        for vm in self.local_vms() {
            if vm.running || vm.state == "running" {
                let _ = self.tart(["stop", "--timeout", "5", vm.name.as_str()]);
            }
            let _ = self.tart(["delete", vm.name.as_str()]);
        }
    }

    /// What is left behind: local VMs, live processes whose cmdline (or environment) mentions
    /// this TART_HOME or `marker` (e.g. a job id or VM name prefix), and entries in `dir`.
    pub fn leaks(&self, marker: Option<&str>, dir: Option<&Path>) -> Leaks {
        let vms = self
            .local_vms()
            .into_iter()
            .map(|v| format!("{} ({})", v.name, v.state))
            .collect();
        let home = self.tart_home.display().to_string();
        let mut needles = vec![home.clone()];
        if let Some(m) = marker {
            needles.push(m.to_string());
        }
        let processes = processes_mentioning(&needles, Some(&format!("TART_HOME={home}")));
        let files = dir.map(dir_entries).unwrap_or_default();
        Leaks {
            vms,
            processes,
            files,
        }
    }
}

impl Default for SimHost {
    fn default() -> Self {
        SimHost::new()
    }
}

/// Removes the simulator's Local Network privacy rules (iptables, see the simulator's
/// `netfault`) that name `sim_host`: a `tart run` killed with SIGKILL leaves its rule, which
/// would block whichever guest gets that address next, on any test bed of this machine.
fn remove_network_faults(sim_host: &Path) {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "OUTPUT"])
        .output()
    else {
        return;
    };
    let tag = format!("tart-sim-local-network {}", sim_host.display());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(spec) = line.strip_prefix("-A ") else {
            continue;
        };
        if !line.contains(&tag) {
            continue;
        }
        // `-S` quotes the comment; split it back into the words iptables expects.
        let mut args = vec!["-w".to_string(), "-D".to_string()];
        let (before, rest) = spec.split_once('"').unwrap_or((spec, ""));
        args.extend(before.split_whitespace().map(String::from));
        if let Some((comment, after)) = rest.split_once('"') {
            args.push(comment.to_string());
            args.extend(after.split_whitespace().map(String::from));
        }
        let _ = Command::new("iptables")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.stop_and_delete_all();
        remove_network_faults(&self.sim_host);
        // Last resort: anything still running for this TART_HOME (a leaked `tart run`).
        let home = self.tart_home.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_mentioning(
                std::slice::from_ref(&home),
                Some(&format!("TART_HOME={home}")),
            );
            if left.is_empty() || Instant::now() >= deadline {
                for (pid, _) in left {
                    // SAFETY: kill(2) on a pid we just observed as belonging to this host.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
                break;
            }
            for (pid, _) in &left {
                unsafe {
                    libc::kill(*pid as i32, libc::SIGTERM);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Live (non-zombie) processes other than this one whose cmdline contains one of `needles`,
/// or whose environment contains the exact entry `env_entry`.
pub fn processes_mentioning(needles: &[String], env_entry: Option<&str>) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = e.path();
        if let Ok(stat) = std::fs::read_to_string(base.join("stat")) {
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
            {
                continue;
            }
        }
        let Ok(raw) = std::fs::read(base.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim_end()
            .to_string();
        let mut hit = needles
            .iter()
            .any(|n| !n.is_empty() && cmdline.contains(n.as_str()));
        if !hit {
            if let (Some(entry), Ok(env)) = (env_entry, std::fs::read(base.join("environ"))) {
                hit = env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes());
            }
        }
        if hit {
            out.push((pid, cmdline));
        }
    }
    out
}

fn output_with_timeout(mut c: Command, limit: Duration) -> Output {
    let child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", c.get_program()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.expect("wait"),
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            rx.recv().expect("wait").expect("wait")
        }
    }
}
