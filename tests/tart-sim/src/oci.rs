//! OCI names, the test-written catalogue, the OCI cache, `pull`, registry credentials,
//! `login` and `logout`.

use crate::util::*;
use crate::Fail;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

#[derive(Clone, Debug)]
pub struct Remote {
    pub host: String,
    pub ns: String,
    pub reference: Reference,
}

impl Remote {
    pub fn repo(&self) -> String {
        format!("{}/{}", self.host, self.ns)
    }
    pub fn full(&self) -> String {
        match &self.reference {
            Reference::Tag(t) => format!("{}/{}:{}", self.host, self.ns, t),
            Reference::Digest(d) => format!("{}/{}@sha256:{}", self.host, self.ns, d),
        }
    }
    /// `cache/OCIs/<host>/<ns…>` (a `:` in host:port percent-encoded).
    pub fn cache_dir(&self, home: &Path) -> PathBuf {
        let mut p = home.join("cache/OCIs").join(self.host.replace(':', "%3A"));
        for c in self.ns.split('/') {
            p = p.join(c);
        }
        p
    }
}

fn component_ok(c: &str) -> bool {
    if c.is_empty() || c.contains("..") {
        return false;
    }
    let b = c.as_bytes();
    let sep = |x: u8| x == b'.' || x == b'-' || x == b'_';
    if sep(b[0]) || sep(b[b.len() - 1]) {
        return false;
    }
    b.iter().all(|&x| x.is_ascii_alphanumeric() || sep(x))
}

/// Parses `host[:port]/namespace[/more][:tag | @sha256:<hex>]`; `None` means a local name.
pub fn parse_remote(s: &str) -> Option<Remote> {
    let (host, rest) = s.split_once('/')?;
    let (hname, port) = match host.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    if !component_ok(hname) {
        return None;
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let (path, reference) = if let Some((p, d)) = rest.split_once("@sha256:") {
        if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        (p, Reference::Digest(d.to_ascii_lowercase()))
    } else if let Some((p, t)) = rest.rsplit_once(':') {
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return None;
        }
        (p, Reference::Tag(t.to_string()))
    } else {
        (rest, Reference::Tag("latest".into()))
    };
    if !path.split('/').all(component_ok) {
        return None;
    }
    Some(Remote {
        host: host.to_string(),
        ns: path.to_string(),
        reference,
    })
}

// ---------- catalogue ----------

fn d_admin() -> String {
    "admin".into()
}
fn d_pull_ms() -> u64 {
    200
}
fn d_size() -> u64 {
    25_300_000_000
}
fn d_cpu() -> u32 {
    4
}
fn d_mem() -> u64 {
    8192
}
fn d_disk() -> u64 {
    50
}
fn d_boot() -> u64 {
    300
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Faults {
    #[serde(default = "d_boot")]
    pub boot_delay_ms: u64,
    #[serde(default)]
    pub never_ip: bool,
    #[serde(default)]
    pub run_dies: bool,
    #[serde(default)]
    pub run_dies_message: Option<String>,
    /// With `run_dies`: the failure comes this long after the start (SIGINT ends it before).
    #[serde(default)]
    pub run_dies_after_ms: Option<u64>,
    #[serde(default)]
    pub guest_dies_after_ms: Option<u64>,
    #[serde(default)]
    pub reject_logins: bool,
    #[serde(default)]
    pub pull_fails: bool,
    #[serde(default)]
    pub pull_refuses_credentials: bool,
    #[serde(default)]
    pub clone_fails_disk: bool,
    /// macOS 15+ Local Network privacy: TCP from the host to the guest fails with
    /// EHOSTUNREACH once the guest has its IP.
    #[serde(default)]
    pub local_network_denied: bool,
    /// The guest agent's stream breaks this long into every `tart exec`.
    #[serde(default)]
    pub exec_breaks_after_ms: Option<u64>,
    /// The guest agent answers only this long after `tart run` started (on macOS it is a
    /// launchd agent of the GUI login, which comes after the network).
    #[serde(default)]
    pub agent_starts_after_ms: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        serde_json::from_value(json!({})).unwrap()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Image {
    pub os: String,
    #[serde(default = "d_admin")]
    pub user: String,
    #[serde(default = "d_admin")]
    pub password: String,
    #[serde(default)]
    pub agent: bool,
    #[serde(default = "d_pull_ms")]
    pub pull_ms: u64,
    #[serde(default = "d_size")]
    pub size_bytes: u64,
    #[serde(default = "d_cpu")]
    pub cpu: u32,
    #[serde(default = "d_mem")]
    pub memory_mib: u64,
    #[serde(default = "d_disk")]
    pub disk_gb: u64,
    #[serde(default)]
    pub registry_auth: Option<Auth>,
    #[serde(default)]
    pub faults: Faults,
    /// Optional explicit digest (64 hex); otherwise derived from the entry.
    #[serde(default)]
    pub digest: Option<String>,
    /// Homebrew in /opt/homebrew (with gitlab-runner), on PATH only through ~/.zprofile
    /// (macOS images).
    #[serde(default)]
    pub homebrew: bool,
    /// Public keys baked into the user's `~/.ssh/authorized_keys` (a key-only image).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// The image's `cpuCountMin` (default: 2 for macOS, as Cirrus images have, 1 for Linux).
    #[serde(default)]
    pub cpu_min: Option<u32>,
    /// The image's `memorySizeMin` in MiB (default: 4096 for macOS, 512 for Linux).
    #[serde(default)]
    pub memory_min_mib: Option<u64>,
}

/// What a VM knows about the image it came from (`vms/<name>/sim.json`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SimVm {
    pub os: String,
    #[serde(default = "d_admin")]
    pub user: String,
    #[serde(default = "d_admin")]
    pub password: String,
    #[serde(default)]
    pub agent: bool,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    #[serde(default)]
    pub homebrew: bool,
}

impl SimVm {
    pub fn load(vm_dir: &Path, os_fallback: &str) -> SimVm {
        fs::read(vm_dir.join("sim.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::from_value(json!({ "os": os_fallback })).unwrap())
    }
}

pub fn catalogue(home: &Path) -> Result<Vec<(Remote, Image)>, Fail> {
    let p = home.join("catalogue.json");
    let Ok(b) = fs::read(&p) else {
        return Ok(vec![]);
    };
    #[derive(Deserialize)]
    struct Cat {
        #[serde(default)]
        images: serde_json::Map<String, Value>,
    }
    let cat: Cat = serde_json::from_slice(&b)
        .map_err(|e| Fail::Error(format!("tart-sim: invalid catalogue {}: {e}", p.display())))?;
    let mut out = vec![];
    for (k, v) in cat.images {
        let r = parse_remote(&k).ok_or_else(|| {
            Fail::Error(format!("tart-sim: catalogue key {k:?} is not an OCI name"))
        })?;
        let img: Image = serde_json::from_value(v)
            .map_err(|e| Fail::Error(format!("tart-sim: catalogue entry {k:?}: {e}")))?;
        out.push((r, img));
    }
    Ok(out)
}

pub fn image_digest(r: &Remote, img: &Image) -> String {
    img.digest.clone().unwrap_or_else(|| {
        pseudo_digest(&format!(
            "{}|{}",
            r.repo(),
            serde_json::to_string(img).unwrap()
        ))
    })
}

fn find_image(home: &Path, r: &Remote) -> Result<Option<(Remote, Image, String)>, Fail> {
    for (cr, img) in catalogue(home)? {
        if cr.repo() != r.repo() {
            continue;
        }
        let d = image_digest(&cr, &img);
        let hit = match &r.reference {
            Reference::Tag(t) => cr.reference == Reference::Tag(t.clone()),
            Reference::Digest(h) => *h == d,
        };
        if hit {
            return Ok(Some((cr, img, d)));
        }
    }
    Ok(None)
}

// ---------- credentials ----------

fn env_credentials(host: &str) -> Option<(String, String)> {
    let u = std::env::var("TART_REGISTRY_USERNAME").ok()?;
    let p = std::env::var("TART_REGISTRY_PASSWORD").ok()?;
    if let Ok(h) = std::env::var("TART_REGISTRY_HOSTNAME") {
        if h != host {
            return None;
        }
    }
    Some((u, p))
}

fn docker_credentials(host: &str) -> Option<(String, String)> {
    let home = crate::util::foundation_home();
    let cfg: Value =
        serde_json::from_slice(&fs::read(home.join(".docker/config.json")).ok()?).ok()?;
    if let Some(a) = cfg
        .get("auths")
        .and_then(|a| a.get(host))
        .and_then(|a| a.get("auth"))
        .and_then(|a| a.as_str())
    {
        let dec = String::from_utf8(base64_decode(a)?).ok()?;
        let (u, p) = dec.split_once(':')?;
        return Some((u.into(), p.into()));
    }
    let helpers = cfg.get("credHelpers")?.as_object()?;
    let helper = helpers.get(host).or_else(|| {
        helpers
            .iter()
            .find(|(k, _)| anchored_match(k, host))
            .map(|(_, v)| v)
    })?;
    let out = std::process::Command::new(format!("docker-credential-{}", helper.as_str()?))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                let _ = i.write_all(host.as_bytes());
            }
            c.wait_with_output()
        })
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((
        v.get("Username")?.as_str()?.into(),
        v.get("Secret")?.as_str()?.into(),
    ))
}

/// Minimal whole-string match for credHelpers keys: exact, or `.*` wildcards only.
fn anchored_match(pat: &str, s: &str) -> bool {
    if !pat.contains(".*") {
        return pat == s;
    }
    let parts: Vec<&str> = pat.split(".*").collect();
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        let p = p.replace("\\.", ".");
        if i == 0 {
            if !rest.starts_with(&p) {
                return false;
            }
            rest = &rest[p.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(&p);
        } else if let Some(k) = rest.find(&p) {
            rest = &rest[k + p.len()..];
        } else {
            return false;
        }
    }
    true
}

/// The runner user's login keychain: per user, not per TART_HOME. The Security framework
/// finds the user's keychain through the user database (`getpwuid`): neither `HOME` nor
/// `CFFIXED_USER_HOME` moves it.
pub const KEYCHAIN: &str = "Library/Keychains/tart-sim-login-keychain.json";

pub fn keychain_path(_tart_home: &Path) -> PathBuf {
    crate::util::user_db_home().join(KEYCHAIN)
}

pub fn keychain(home: &Path) -> serde_json::Map<String, Value> {
    fs::read(keychain_path(home))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn keychain_credentials(home: &Path, host: &str, img_auth: &Auth) -> Option<(String, String)> {
    let k = keychain(home);
    let e = k.get(host)?;
    let user = e.get("username")?.as_str()?.to_string();
    let fp = e.get("fingerprint")?.as_str()?;
    // Only a fingerprint is stored; it matches when the image's password was used.
    if fp == pseudo_digest(&format!("{host}|{user}|{}", img_auth.password)) {
        Some((user, img_auth.password.clone()))
    } else {
        Some((user, String::new()))
    }
}

const UNAUTH: &str =
    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;

fn auth_failed(details: &str) -> Fail {
    Fail::Error(format!(
        "AuthFailed(why: \"received unexpected HTTP status code 401 while retrieving an authentication token\", details: \"{}\")",
        details.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn check_auth(home: &Path, r: &Remote, img: &Image) -> Result<(), Fail> {
    let Some(need) = &img.registry_auth else {
        return Ok(());
    };
    let creds = env_credentials(&r.host)
        .or_else(|| docker_credentials(&r.host))
        .or_else(|| keychain_credentials(home, &r.host, need));
    match creds {
        _ if img.faults.pull_refuses_credentials => Err(auth_failed(
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
        )),
        Some((u, p)) if u == need.username && p == need.password => Ok(()),
        _ => Err(auth_failed(UNAUTH)),
    }
}

// ---------- pull ----------

struct Progress {
    ci: bool,
    last_pct: i64,
    last_print: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            ci: std::env::var_os("CI").is_some(),
            last_pct: -1,
            last_print: None,
            drawn: false,
        }
    }
    fn update(&mut self, pct: i64, force: bool) {
        if pct == self.last_pct {
            return;
        }
        let mut out = std::io::stdout();
        if self.ci {
            let due = self
                .last_print
                .map(|t| t.elapsed() >= Duration::from_secs(1))
                .unwrap_or(true);
            if due || force {
                let _ = writeln!(out, "{pct}%");
                self.last_print = Some(Instant::now());
                self.last_pct = pct;
            }
        } else {
            let bar_w = 40usize;
            let fill = (pct as usize * bar_w) / 100;
            let bar = format!("{}{}", "#".repeat(fill), " ".repeat(bar_w - fill));
            if self.drawn {
                let _ = write!(out, "\x1b[1A\r\x1b[J");
            }
            let _ = writeln!(out, "{pct:>3}% [{bar}]");
            self.drawn = true;
            self.last_pct = pct;
        }
        let _ = out.flush();
    }
}

/// A registry outage or rate limit on this simulated Mac's network:
/// `$TART_SIM_HOST/registry-unreachable` names the registry hosts (one a line; empty: all).
/// A line `<host> rate-limit` answers 429 instead of not answering.
fn registry_reachable(host: &str) -> Result<(), Fail> {
    let Ok(text) = fs::read_to_string(crate::util::sim_host().join("registry-unreachable")) else {
        return Ok(());
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hit = |line: &&&str| line.split_whitespace().next() == Some(host);
    match lines.iter().find(hit) {
        Some(line) if line.ends_with(" rate-limit") => Err(Fail::Error(
            r#"UnexpectedHTTPStatusCode(when: "pulling manifest", code: 429, details: "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"rate limit exceeded\"}]}")"#.into(),
        )),
        Some(_) => Err(unreachable_registry()),
        None if lines.is_empty() => Err(unreachable_registry()),
        None => Ok(()),
    }
}

fn unreachable_registry() -> Fail {
    Fail::Error(
        r#"Error Domain=NSURLErrorDomain Code=-1004 "Could not connect to the server.""#.into(),
    )
}

fn not_found(r: &Remote) -> Fail {
    let _ = r;
    Fail::Error(
        r#"UnexpectedHTTPStatusCode(when: "pulling manifest", code: 404, details: "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}")"#.into(),
    )
}

fn write_image_files(dir: &Path, r: &Remote, img: &Image, digest: &str) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let darwin = img.os == "darwin";
    // The image's MAC is stable per digest, so the first clone keeps it.
    let hb = pseudo_digest(&format!("mac|{digest}"));
    let b = |i: usize| u8::from_str_radix(&hb[i * 2..i * 2 + 2], 16).unwrap();
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (b(0) & 0xfc) | 2,
        b(1),
        b(2),
        b(3),
        b(4),
        b(5)
    );
    let mem = img.memory_mib * 1024 * 1024;
    let mut cfg = serde_json::Map::new();
    cfg.insert("version".into(), json!(1));
    if darwin {
        cfg.insert(
            "hardwareModel".into(),
            json!(base64_encode(
                format!("bplist00-hw-{}", &digest[..16]).as_bytes()
            )),
        );
        cfg.insert(
            "ecid".into(),
            json!(base64_encode(
                format!("bplist00-ecid-{}", &digest[16..32]).as_bytes()
            )),
        );
    }
    cfg.insert(
        "cpuCountMin".into(),
        json!(img
            .cpu_min
            .unwrap_or(if darwin { img.cpu.min(2) } else { 1 })),
    );
    cfg.insert("arch".into(), json!("arm64"));
    cfg.insert("os".into(), json!(img.os));
    cfg.insert("cpuCount".into(), json!(img.cpu));
    cfg.insert(
        "memorySizeMin".into(),
        json!(match img.memory_min_mib {
            Some(mib) => mib * 1024 * 1024,
            None if darwin => mem.min(4096 * 1024 * 1024),
            None => 512 * 1024 * 1024,
        }),
    );
    cfg.insert("memorySize".into(), json!(mem));
    cfg.insert("display".into(), json!({"width": 1024, "height": 768}));
    cfg.insert("diskFormat".into(), json!("raw"));
    cfg.insert("macAddress".into(), json!(mac));
    fs::write(dir.join("config.json"), apple_json(&Value::Object(cfg)))?;
    let disk = fs::File::create(dir.join("disk.img"))?;
    disk.set_len(img.disk_gb * 1_000_000_000)?;
    fs::write(dir.join("nvram.bin"), vec![0u8; 64 * 1024])?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 0, "digest": format!("sha256:{}", pseudo_digest(&format!("cfg|{digest}")))},
        "layers": [{"mediaType": "application/vnd.cirruslabs.tart.disk.v2", "size": img.size_bytes}],
        "annotations": {"org.cirruslabs.tart.sim.name": r.full()}
    });
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )?;
    let sim = SimVm {
        os: img.os.clone(),
        user: img.user.clone(),
        password: img.password.clone(),
        agent: img.agent,
        faults: img.faults.clone(),
        image: Some(r.full()),
        authorized_keys: img.authorized_keys.clone(),
        homebrew: img.homebrew,
    };
    fs::write(
        dir.join("sim.json"),
        serde_json::to_vec_pretty(&sim).unwrap(),
    )?;
    Ok(())
}

/// The digest a cached reference points at, if any.
pub fn cached_digest(home: &Path, r: &Remote) -> Option<String> {
    let dir = r.cache_dir(home);
    match &r.reference {
        Reference::Digest(d) => dir.join(format!("sha256:{d}")).is_dir().then(|| d.clone()),
        Reference::Tag(t) => {
            let l = dir.join(t);
            let target = fs::read_link(&l).ok()?;
            let name = target.file_name()?.to_string_lossy().into_owned();
            let d = name.strip_prefix("sha256:")?.to_string();
            dir.join(&name).is_dir().then_some(d)
        }
    }
}

pub fn cached_image_dir(home: &Path, r: &Remote) -> Option<PathBuf> {
    cached_digest(home, r).map(|d| r.cache_dir(home).join(format!("sha256:{d}")))
}

/// Pulls `r` into the cache. `first_line` prints `pulling <name>...` (not in `clone`).
pub fn pull(home: &Path, r: &Remote, first_line: bool, explicit: bool) -> Result<PathBuf, Fail> {
    let out = |s: String| {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    if first_line {
        out(format!("pulling {}...", r.full()));
    }
    let dir = r.cache_dir(home);
    fs::create_dir_all(&dir).map_err(|e| Fail::Error(format!("{e}")))?;
    let host_dir = home.join("cache/OCIs").join(r.host.replace(':', "%3A"));
    let lockp = host_dir.join(".tart-sim.lock");
    let _lock = match try_flock(&lockp) {
        Some(l) => l,
        None => {
            out("waiting for lock...".into());
            flock_wait(&lockp).ok_or_else(|| Fail::Error("failed to lock the OCI cache".into()))?
        }
    };
    out("pulling manifest...".into());
    registry_reachable(&r.host)?;
    let Some((cr, img, digest)) = find_image(home, r)? else {
        return Err(not_found(r));
    };
    check_auth(home, &cr, &img)?;
    let ddir = dir.join(format!("sha256:{digest}"));
    let link = match &r.reference {
        Reference::Tag(t) => Some(dir.join(t)),
        Reference::Digest(_) => None,
    };
    if ddir.is_dir() {
        let linked = link
            .as_ref()
            .map(|l| fs::read_link(l).ok() == Some(PathBuf::from(format!("sha256:{digest}"))))
            .unwrap_or(true);
        if linked {
            out(format!(
                "{}@sha256:{digest} image is already cached and linked!",
                r.repo()
            ));
        } else {
            out(format!(
                "{}@sha256:{digest} image is already cached! creating a symlink...",
                r.repo()
            ));
            let l = link.unwrap();
            let _ = fs::remove_file(&l);
            std::os::unix::fs::symlink(format!("sha256:{digest}"), &l)
                .map_err(|e| Fail::Error(e.to_string()))?;
        }
        if explicit {
            let _ = fs::write(ddir.join(".explicitly-pulled"), b"");
        }
        return Ok(ddir);
    }
    out(format!(
        "pulling disk ({:.1} GB compressed)...",
        img.size_bytes as f64 / 1e9
    ));
    let mut prog = Progress::new();
    let start = Instant::now();
    let total = Duration::from_millis(img.pull_ms);
    prog.update(0, true);
    let fail_at = if img.faults.pull_fails { 37 } else { 101 };
    loop {
        let el = start.elapsed();
        let pct = if total.is_zero() {
            100
        } else {
            ((el.as_secs_f64() / total.as_secs_f64()) * 100.0).min(100.0) as i64
        };
        if pct >= fail_at {
            prog.update(pct.min(fail_at), true);
            for _ in 0..5 {
                out("Error pulling image: \"The network connection was lost.\", attempting to re-try...".into());
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(Fail::Error(
                "Error Domain=NSURLErrorDomain Code=-1005 \"The network connection was lost.\""
                    .into(),
            ));
        }
        if pct >= 100 {
            prog.update(100, true);
            break;
        }
        prog.update(pct, false);
        std::thread::sleep(Duration::from_millis(20));
    }
    out("pulling NVRAM...".into());
    let tmp = dir.join(format!(".tmp-sha256:{digest}-{}", std::process::id()));
    rm_rf(&tmp);
    write_image_files(&tmp, &cr, &img, &digest).map_err(|e| Fail::Error(e.to_string()))?;
    if explicit {
        let _ = fs::write(tmp.join(".explicitly-pulled"), b"");
    }
    fs::rename(&tmp, &ddir).map_err(|e| Fail::Error(e.to_string()))?;
    if let Some(l) = link {
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(format!("sha256:{digest}"), &l)
            .map_err(|e| Fail::Error(e.to_string()))?;
    }
    Ok(ddir)
}

// ---------- login / logout ----------

pub fn login(
    home: &Path,
    host: &str,
    user: &str,
    password: &str,
    validate: bool,
) -> Result<(), Fail> {
    if validate {
        // The registry accepts the credentials when some catalogue image on this host
        // needs exactly them, or when no image on this host needs credentials at all.
        let imgs: Vec<(Remote, Image)> = catalogue(home)?
            .into_iter()
            .filter(|(r, _)| r.host == host)
            .collect();
        let needs: Vec<&Auth> = imgs
            .iter()
            .filter_map(|(_, i)| i.registry_auth.as_ref())
            .collect();
        let refuses = imgs.iter().any(|(_, i)| i.faults.pull_refuses_credentials);
        let ok = !refuses
            && (needs.is_empty()
                || needs
                    .iter()
                    .any(|a| a.username == user && a.password == password));
        if !ok {
            return Err(Fail::Bare(
                format!(
                    "invalid credentials: AuthFailed(why: \"received unexpected HTTP status code 401 while retrieving an authentication token\", details: \"{}\")",
                    UNAUTH.replace('"', "\\\"")
                ),
                1,
            ));
        }
    }
    let mut k = keychain(home);
    k.insert(
        host.to_string(),
        json!({"username": user, "fingerprint": pseudo_digest(&format!("{host}|{user}|{password}"))}),
    );
    if let Some(dir) = keychain_path(home).parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(
        keychain_path(home),
        serde_json::to_vec_pretty(&Value::Object(k)).unwrap(),
    )
    .map_err(|e| Fail::Error(format!("Keychain failed to update item: {e}")))
}

pub fn logout(home: &Path, host: &str) {
    let mut k = keychain(home);
    if k.remove(host).is_some() {
        let _ = fs::write(
            keychain_path(home),
            serde_json::to_vec_pretty(&Value::Object(k)).unwrap(),
        );
    }
}
