//! Every sub-command except `run`.

use crate::cli::*;
use crate::oci::{self, parse_remote, Reference, SimVm};
use crate::util::*;
use crate::{Fail, R};
use serde_json::{json, Map, Value};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------- shared VM helpers ----------

pub fn not_exist(name: &str) -> Fail {
    Fail::Bare(format!("the specified VM \"{name}\" does not exist"), 2)
}

pub fn vm_dir(home: &Path, name: &str) -> PathBuf {
    home.join("vms").join(name)
}

/// Opens a local VM as Tart does: kind A errors, access time updated.
pub fn open_vm(home: &Path, name: &str) -> R<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(not_exist(name));
    }
    let d = vm_dir(home, name);
    if !d.is_dir() {
        return Err(not_exist(name));
    }
    if !["config.json", "disk.img", "nvram.bin"]
        .iter()
        .all(|f| d.join(f).exists())
    {
        return Err(Fail::Bare(
            "VM is missing some of its files (config.json, disk.img or nvram.bin)".into(),
            1,
        ));
    }
    touch_atime(&d);
    Ok(d)
}

pub fn read_config(dir: &Path) -> R<Map<String, Value>> {
    // config.json is rewritten in place (to keep the running VM's lock): a concurrent
    // reader may catch it half-written, so retry briefly before calling it corrupt.
    let mut tries = 0;
    loop {
        let b = fs::read(dir.join("config.json")).map_err(|e| Fail::Error(e.to_string()))?;
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&b) {
            return Ok(m);
        }
        tries += 1;
        if tries >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        Err(Fail::Error(
            "dataCorrupted(Swift.DecodingError.Context(codingPath: [], debugDescription: \"The given data was not valid JSON.\"))"
                .into(),
        ))
    }
}

pub fn write_config(dir: &Path, cfg: &Map<String, Value>) -> R<()> {
    write_in_place(
        &dir.join("config.json"),
        apple_json(&Value::Object(cfg.clone())).as_bytes(),
    )
    .map_err(|e| Fail::Error(e.to_string()))
}

pub fn cfg_os(cfg: &Map<String, Value>) -> String {
    cfg.get("os")
        .and_then(|v| v.as_str())
        .unwrap_or("darwin")
        .to_string()
}

pub fn cfg_mac(cfg: &Map<String, Value>) -> String {
    cfg.get("macAddress")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

pub fn running_pid(dir: &Path) -> Option<i32> {
    lock_holder(&dir.join("config.json"))
}

pub fn state(dir: &Path) -> &'static str {
    if running_pid(dir).is_some() {
        "running"
    } else if dir.join("state.vzvmsave").exists() {
        "suspended"
    } else {
        "stopped"
    }
}

/// (logical bytes, allocated bytes) of config + disk + nvram.
fn sizes(dir: &Path) -> (u64, u64) {
    let mut l = 0;
    let mut a = 0;
    for f in ["config.json", "disk.img", "nvram.bin"] {
        if let Ok(m) = fs::metadata(dir.join(f)) {
            l += m.len();
            a += m.blocks() * 512;
        }
    }
    (l, a)
}

pub fn local_vms(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(home.join("vms"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Garbage-collects unlocked entries of `$TART_HOME/tmp` (§1.5). When an entry vanishes
/// under it (another Tart process collected it first), Tart's `FileLock` opens nothing,
/// `flock` fails with EBADF, and the warning goes to stderr before the command's own
/// output; `TART_SIM_GC_WARNING=1` makes every collection lose that race.
pub fn gc_tmp(home: &Path) {
    let warn = |entry: &Path| {
        eprintln!(
            "Failed to perform garbage collection: Failed(\"failed to lock file://{}/: Bad file descriptor\")",
            entry.display()
        );
    };
    if std::env::var_os("TART_SIM_GC_WARNING").is_some_and(|v| v == "1") {
        warn(&home.join("tmp").join(random_hex(16).to_ascii_uppercase()));
        return;
    }
    let Ok(rd) = fs::read_dir(home.join("tmp")) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        // A clone creates its work directory and then locks it; an entry younger than a
        // minute may be in that instant, so it is left for a later collection.
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Tart gives up the whole collection at the first vanished entry.
                warn(&p);
                return;
            }
            Err(_) => continue,
        };
        let fresh = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < std::time::Duration::from_secs(60));
        if fresh {
            continue;
        }
        let Ok(f) = fs::File::open(&p) else {
            // Tart gives up the whole collection at the first such entry.
            warn(&p);
            return;
        };
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            rm_rf(&p);
        }
    }
}

fn parse_format<'a>(cmd: &Cmd, p: &'a Parsed) -> R<&'a str> {
    Ok(enum_opt(cmd, p, "format", &["text", "json"])?.unwrap_or("text"))
}

// ---------- clone ----------

const CLONE: Cmd = Cmd {
    name: "clone",
    opts: &[flag("insecure"), opt("concurrency", "concurrency"), opt("prune-limit", "n"), flag("deduplicate")],
    positionals: &["source-name", "new-name"],
    min: 2,
    repeating_last: false,
    passthrough: false,
    usage: "tart clone <source-name> <new-name> [--insecure] [--concurrency <concurrency>] [--prune-limit <n>]",
};

pub fn clone(args: &[String]) -> R<()> {
    let p = parse(&CLONE, args)?;
    let conc: u32 = int_opt(&CLONE, &p, "concurrency")?.unwrap_or(4);
    let _: u64 = int_opt(&CLONE, &p, "prune-limit")?.unwrap_or(100);
    let (src, new) = (p.pos[0].clone(), p.pos[1].clone());
    if new.contains('/') {
        return Err(usage_error(&CLONE, "<new-name> should be a local name"));
    }
    if conc < 1 {
        return Err(usage_error(
            &CLONE,
            "network concurrency cannot be less than 1",
        ));
    }
    let home = tart_home()?;
    let (src_dir, local) = match parse_remote(&src) {
        Some(r) => match oci::cached_image_dir(&home, &r) {
            Some(d) => (d, false),
            None => (oci::pull(&home, &r, false, false)?, false),
        },
        None => (open_vm(&home, &src)?, true),
    };
    let sim = SimVm::load(&src_dir, "darwin");
    let tmp = home.join("tmp").join(random_hex(16));
    fs::create_dir_all(&tmp).map_err(|e| Fail::Error(e.to_string()))?;
    let tmp_lock = fs::File::open(&tmp).map_err(|e| Fail::Error(e.to_string()))?;
    unsafe { libc::flock(tmp_lock.as_raw_fd(), libc::LOCK_EX) };
    let cleanup = |e: String| {
        rm_rf(&tmp);
        Fail::Error(e)
    };
    if sim.faults.clone_fails_disk {
        let _ = fs::copy(src_dir.join("config.json"), tmp.join("config.json"));
        return Err(cleanup(
            "Error Domain=NSCocoaErrorDomain Code=640 \"You can’t save the file “disk.img” because the volume “Macintosh HD” is out of space.\" UserInfo={NSUnderlyingError=Error Domain=NSPOSIXErrorDomain Code=28 \"No space left on device\"}".into(),
        ));
    }
    let mut entries = vec!["config.json", "disk.img", "nvram.bin", "sim.json"];
    if local {
        entries.push("guest");
    }
    for f in entries {
        let s = src_dir.join(f);
        if s.exists() {
            copy_tree(&s, &tmp.join(f)).map_err(|e| cleanup(e.to_string()))?;
        }
    }
    let _ = fs::remove_file(tmp.join("guest/plan.json"));
    // A new MAC only if some local VM already has the source's MAC (§2.4).
    let mut cfg = read_config(&tmp).inspect_err(|_e| {
        rm_rf(&tmp);
    })?;
    let mac = cfg_mac(&cfg);
    let suspended = src_dir.join("state.vzvmsave").exists();
    let collision = local_vms(&home).iter().any(|n| {
        read_config(&vm_dir(&home, n))
            .map(|c| cfg_mac(&c) == mac)
            .unwrap_or(false)
    });
    if collision && !suspended {
        cfg.insert("macAddress".into(), json!(random_mac()));
    }
    write_config(&tmp, &cfg)?;
    let _g = flock_wait(&home.join(".tart-sim-home.lock"));
    let dst = vm_dir(&home, &new);
    rm_rf(&dst);
    fs::rename(&tmp, &dst).map_err(|e| cleanup(e.to_string()))?;
    touch_atime(&dst);
    Ok(())
}

// ---------- pull ----------

const PULL: Cmd = Cmd {
    name: "pull",
    opts: &[
        flag("insecure"),
        opt("concurrency", "concurrency"),
        flag("deduplicate"),
    ],
    positionals: &["remote-name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart pull <remote-name> [--insecure] [--concurrency <concurrency>]",
};

pub fn pull(args: &[String]) -> R<()> {
    let p = parse(&PULL, args)?;
    let conc: u32 = int_opt(&PULL, &p, "concurrency")?.unwrap_or(4);
    if conc < 1 {
        return Err(usage_error(
            &PULL,
            "network concurrency cannot be less than 1",
        ));
    }
    let home = tart_home()?;
    let name = &p.pos[0];
    if !name.contains('/') && vm_dir(&home, name).is_dir() {
        println!("\"{name}\" is a local image, nothing to pull here!");
        return Ok(());
    }
    let Some(r) = parse_remote(name) else {
        return Err(Fail::Bare(
            format!(
                "failed to parse remote name: unexpected input (character {})",
                name.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(0) + 1
            ),
            1,
        ));
    };
    oci::pull(&home, &r, true, true).map(|_| ())
}

// ---------- login / logout ----------

const LOGIN: Cmd = Cmd {
    name: "login",
    opts: &[
        opt("username", "username"),
        flag("password-stdin"),
        flag("insecure"),
        flag("no-validate"),
    ],
    positionals: &["host"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage:
        "tart login <host> [--username <username>] [--password-stdin] [--insecure] [--no-validate]",
};

pub fn login(args: &[String]) -> R<()> {
    let p = parse(&LOGIN, args)?;
    let user = p.get("username").map(|s| s.to_string());
    let stdin = p.has("password-stdin");
    if user.is_some() != stdin {
        return Err(usage_error(
            &LOGIN,
            "both --username and --password-stdin are required",
        ));
    }
    let home = tart_home()?;
    gc_tmp(&home);
    let Some(user) = user else {
        return Err(Fail::Error(
            "CredentialRequired(which: \"username\")".into(),
        ));
    };
    let mut pw = String::new();
    use std::io::Read;
    let _ = std::io::stdin().read_to_string(&mut pw);
    let pw = pw.trim_end_matches(['\n', '\r']).to_string();
    oci::login(&home, &p.pos[0], &user, &pw, !p.has("no-validate"))
}

const LOGOUT: Cmd = Cmd {
    name: "logout",
    opts: &[],
    positionals: &["host"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart logout <host>",
};

pub fn logout(args: &[String]) -> R<()> {
    let p = parse(&LOGOUT, args)?;
    let home = tart_home()?;
    gc_tmp(&home);
    oci::logout(&home, &p.pos[0]);
    Ok(())
}

// ---------- list / get ----------

const LIST: Cmd = Cmd {
    name: "list",
    opts: &[
        opt("source", "source"),
        opt("format", "format"),
        sflag("quiet", 'q'),
    ],
    positionals: &[],
    min: 0,
    repeating_last: false,
    passthrough: false,
    usage: "tart list [--source <source>] [--format <format>] [--quiet]",
};

struct Entry {
    source: &'static str,
    name: String,
    disk: u64,
    size: u64,
    accessed: i64,
    state: &'static str,
}

fn oci_entries(home: &Path) -> Vec<(String, PathBuf, bool)> {
    // (name, path, is_tag)
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf, bool)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_symlink() {
                if p.is_dir() {
                    out.push((format!("{prefix}:{n}"), p, true));
                }
            } else if let Some(d) = n.strip_prefix("sha256:") {
                out.push((format!("{prefix}@sha256:{d}"), p, false));
            } else if p.is_dir() {
                walk(&p, &format!("{prefix}/{n}"), out);
            }
        }
    }
    let mut out = vec![];
    let Ok(rd) = fs::read_dir(home.join("cache/OCIs")) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let host = e.file_name().to_string_lossy().replace("%3A", ":");
        if host.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        let mut v = vec![];
        walk(&e.path(), &host, &mut v);
        out.extend(v);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn list(args: &[String]) -> R<()> {
    let p = parse(&LIST, args)?;
    let source = p.get("source");
    if let Some(s) = source {
        if s != "local" && s != "oci" {
            return Err(usage_error(&LIST, format!("'{s}' is not a valid <source>")));
        }
    }
    let format = parse_format(&LIST, &p)?;
    let home = tart_home()?;
    gc_tmp(&home);
    let mut entries = vec![];
    if source != Some("oci") {
        for n in local_vms(&home) {
            let d = vm_dir(&home, &n);
            let (l, a) = sizes(&d);
            entries.push(Entry {
                source: "local",
                name: n,
                disk: l / 1_000_000_000,
                size: a / 1_000_000_000,
                accessed: atime(&d),
                state: state(&d),
            });
        }
    }
    if source != Some("local") {
        for (n, d, _) in oci_entries(&home) {
            let (l, a) = sizes(&d);
            entries.push(Entry {
                source: "OCI",
                name: n,
                disk: l / 1_000_000_000,
                size: a / 1_000_000_000,
                accessed: atime(&d),
                state: "stopped",
            });
        }
    }
    if p.has("quiet") {
        for e in &entries {
            println!("{}", e.name);
        }
        return Ok(());
    }
    if format == "json" {
        let arr: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("Source".into(), json!(e.source));
                m.insert("Name".into(), json!(e.name));
                m.insert("Disk".into(), json!(e.disk));
                m.insert("Size".into(), json!(e.size));
                m.insert("Accessed".into(), json!(iso8601(e.accessed)));
                m.insert("Running".into(), json!(e.state == "running"));
                m.insert("State".into(), json!(e.state));
                Value::Object(m)
            })
            .collect();
        println!("{}", apple_json(&Value::Array(arr)));
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.source.into(),
                    e.name.clone(),
                    e.disk.to_string(),
                    e.size.to_string(),
                    relative(e.accessed),
                    e.state.into(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &["Source", "Name", "Disk", "Size", "Accessed", "State"],
                &rows
            )
        );
    }
    Ok(())
}

const GET: Cmd = Cmd {
    name: "get",
    opts: &[opt("format", "format")],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart get <name> [--format <format>]",
};

fn display_string(cfg: &Map<String, Value>) -> String {
    let d = cfg
        .get("display")
        .cloned()
        .unwrap_or(json!({"width": 1024, "height": 768}));
    let w = d.get("width").and_then(|v| v.as_u64()).unwrap_or(1024);
    let h = d.get("height").and_then(|v| v.as_u64()).unwrap_or(768);
    let u = d.get("unit").and_then(|v| v.as_str()).unwrap_or("");
    format!("{w}x{h}{u}")
}

pub fn get(args: &[String]) -> R<()> {
    let p = parse(&GET, args)?;
    let format = parse_format(&GET, &p)?;
    let home = tart_home()?;
    gc_tmp(&home);
    let d = open_vm(&home, &p.pos[0])?;
    let cfg = read_config(&d)?;
    let (l, a) = sizes(&d);
    let st = state(&d);
    let os = cfg_os(&cfg);
    let cpu = cfg.get("cpuCount").and_then(|v| v.as_u64()).unwrap_or(0);
    let mem = cfg.get("memorySize").and_then(|v| v.as_u64()).unwrap_or(0) / 1024 / 1024;
    let fmt = cfg
        .get("diskFormat")
        .and_then(|v| v.as_str())
        .unwrap_or("raw")
        .to_string();
    let size = format!("{:.3}", a as f64 / 1e9);
    if format == "json" {
        let mut m = Map::new();
        m.insert("OS".into(), json!(os));
        m.insert("CPU".into(), json!(cpu));
        m.insert("Memory".into(), json!(mem));
        m.insert("Disk".into(), json!(l / 1_000_000_000));
        m.insert("DiskFormat".into(), json!(fmt));
        m.insert("Size".into(), json!(size));
        m.insert("Display".into(), json!(display_string(&cfg)));
        m.insert("Running".into(), json!(st == "running"));
        m.insert("State".into(), json!(st));
        println!("{}", apple_json(&Value::Object(m)));
    } else {
        let row = vec![
            os,
            cpu.to_string(),
            mem.to_string(),
            (l / 1_000_000_000).to_string(),
            fmt,
            size,
            display_string(&cfg),
            st.into(),
        ];
        println!(
            "{}",
            table(
                &[
                    "OS",
                    "CPU",
                    "Memory",
                    "Disk",
                    "DiskFormat",
                    "Size",
                    "Display",
                    "State"
                ],
                &[row]
            )
        );
    }
    Ok(())
}

// ---------- set ----------

const SET: Cmd = Cmd {
    name: "set",
    opts: &[
        opt("cpu", "cpu"),
        opt("memory", "memory"),
        opt("display", "display"),
        flag("display-refit"),
        flag("no-display-refit"),
        flag("random-mac"),
        flag("random-serial"),
        opt("disk", "disk"),
        opt("disk-size", "disk-size"),
    ],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart set <name> [--cpu <cpu>] [--memory <memory>] [--display <display>] [--[no-]display-refit] [--random-mac] [--random-serial] [--disk <disk>] [--disk-size <disk-size>]",
};

fn human_gb(bytes: u64) -> String {
    format!("{} GB", bytes / 1_000_000_000)
}

pub fn set(args: &[String]) -> R<()> {
    let p = parse(&SET, args)?;
    let cpu: Option<u64> = int_opt(&SET, &p, "cpu")?;
    let memory: Option<u64> = int_opt(&SET, &p, "memory")?;
    let disk_size: Option<u64> = int_opt(&SET, &p, "disk-size")?;
    let display = match p.get("display") {
        None => None,
        Some(v) => {
            let (body, unit) = if let Some(b) = v.strip_suffix("pt") {
                (b, Some("pt"))
            } else if let Some(b) = v.strip_suffix("px") {
                (b, Some("px"))
            } else {
                (v, None)
            };
            let wh = body
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)));
            match wh {
                Some((w, h)) => Some((w, h, unit)),
                None => {
                    return Err(usage_error(
                        &SET,
                        format!("The value '{v}' is invalid for '--display <display>'"),
                    ))
                }
            }
        }
    };
    let home = tart_home()?;
    gc_tmp(&home);
    let d = open_vm(&home, &p.pos[0])?;
    let mut cfg = read_config(&d)?;
    let darwin = cfg_os(&cfg) == "darwin";
    if let Some(c) = cpu {
        let min = cfg.get("cpuCountMin").and_then(|v| v.as_u64()).unwrap_or(1);
        if darwin && c < min {
            return Err(Fail::Error(format!("LessThanMinimalResourcesError: VM should have {min} CPU cores at minimum (requested {c})")));
        }
        cfg.insert("cpuCount".into(), json!(c));
    }
    if let Some(m) = memory {
        let bytes = m * 1024 * 1024;
        let min = cfg
            .get("memorySizeMin")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if darwin && bytes < min {
            return Err(Fail::Error(format!("LessThanMinimalResourcesError: VM should have {min} bytes of memory at minimum (requested {bytes})")));
        }
        cfg.insert("memorySize".into(), json!(bytes));
    }
    if let Some((w, h, u)) = display {
        let mut dm = Map::new();
        dm.insert("width".into(), json!(w));
        dm.insert("height".into(), json!(h));
        if let Some(u) = u {
            dm.insert("unit".into(), json!(u));
        }
        cfg.insert("display".into(), Value::Object(dm));
    }
    if p.has("display-refit") {
        cfg.insert("displayRefit".into(), json!(true));
    } else if p.has("no-display-refit") {
        cfg.insert("displayRefit".into(), json!(false));
    } else {
        cfg.remove("displayRefit");
    }
    if p.has("random-mac") {
        cfg.insert("macAddress".into(), json!(random_mac()));
    }
    if p.has("random-serial") && darwin {
        cfg.insert(
            "ecid".into(),
            json!(base64_encode(
                format!("bplist00-ecid-{}", random_hex(8)).as_bytes()
            )),
        );
    }
    if let Some(src) = p.get("disk") {
        fs::copy(src, d.join("disk.img")).map_err(|e| Fail::Error(e.to_string()))?;
    }
    if let Some(gb) = disk_size {
        let want = gb * 1_000_000_000;
        let cur = fs::metadata(d.join("disk.img"))
            .map(|m| m.len())
            .unwrap_or(0);
        if want < cur {
            return Err(Fail::Bare(
                format!(
                    "new disk size of {} should be larger than the current disk size of {}",
                    human_gb(want),
                    human_gb(cur)
                ),
                1,
            ));
        }
        let f = fs::OpenOptions::new()
            .write(true)
            .open(d.join("disk.img"))
            .map_err(|e| Fail::Error(e.to_string()))?;
        f.set_len(want).map_err(|e| Fail::Error(e.to_string()))?;
    }
    write_config(&d, &cfg)
}

// ---------- stop ----------

const STOP: Cmd = Cmd {
    name: "stop",
    opts: &[sopt("timeout", 't', "timeout")],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart stop <name> [--timeout <timeout>]",
};

pub fn stop(args: &[String]) -> R<()> {
    let p = parse(&STOP, args)?;
    let timeout: u64 = int_opt(&STOP, &p, "timeout")?.unwrap_or(30);
    let home = tart_home()?;
    gc_tmp(&home);
    let name = &p.pos[0];
    let d = open_vm(&home, name)?;
    let Some(pid) = running_pid(&d) else {
        if d.join("state.vzvmsave").exists() {
            let _ = fs::remove_file(d.join("state.vzvmsave"));
            return Ok(());
        }
        return Err(Fail::Bare(format!("VM \"{name}\" is not running"), 2));
    };
    unsafe { libc::kill(pid, libc::SIGINT) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(timeout) {
        if running_pid(&d).is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = match running_pid(&d) {
        Some(p) => p,
        None => return Ok(()),
    };
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Fail::Bare(
            format!("failed to forcefully terminate the VM \"{name}\": {e}"),
            1,
        ));
    }
    // The lock goes away once the killed process is reaped.
    let start = Instant::now();
    while running_pid(&d).is_some() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------- delete ----------

const DELETE: Cmd = Cmd {
    name: "delete",
    opts: &[],
    positionals: &["name"],
    min: 1,
    repeating_last: true,
    passthrough: false,
    usage: "tart delete <name> ...",
};

fn gc_digests(home: &Path) {
    let entries = oci_entries(home);
    let referenced: Vec<PathBuf> = entries
        .iter()
        .filter(|e| e.2)
        .filter_map(|e| fs::canonicalize(&e.1).ok())
        .collect();
    for (_, p, is_tag) in &entries {
        if !is_tag {
            let c = fs::canonicalize(p).unwrap_or(p.clone());
            if !referenced.contains(&c) {
                rm_rf(p);
            }
        }
    }
}

pub fn delete(args: &[String]) -> R<()> {
    let p = parse(&DELETE, args)?;
    let home = tart_home()?;
    gc_tmp(&home);
    for name in &p.pos {
        if let Some(r) = parse_remote(name) {
            let dir = r.cache_dir(&home);
            let target = match &r.reference {
                Reference::Tag(t) => dir.join(t),
                Reference::Digest(d) => dir.join(format!("sha256:{d}")),
            };
            if !target.exists() && !target.is_symlink() {
                return Err(not_exist(name));
            }
            rm_rf(&target);
            gc_digests(&home);
            continue;
        }
        let d = vm_dir(&home, name);
        if name.is_empty() || !d.is_dir() {
            return Err(not_exist(name));
        }
        if running_pid(&d).is_some() {
            return Err(Fail::Bare(format!("VM \"{name}\" is running"), 1));
        }
        fs::remove_dir_all(&d).map_err(|e| Fail::Error(e.to_string()))?;
    }
    Ok(())
}

// ---------- prune ----------

const PRUNE: Cmd = Cmd {
    name: "prune",
    opts: &[
        opt("entries", "entries"),
        opt("older-than", "n"),
        opt("space-budget", "n"),
        opt("cache-budget", "n"),
        flag("gc"),
    ],
    positionals: &[],
    min: 0,
    repeating_last: false,
    passthrough: false,
    usage: "tart prune [--entries <entries>] [--older-than <n>] [--space-budget <n>]",
};

pub fn prune(args: &[String]) -> R<()> {
    let p = parse(&PRUNE, args)?;
    let entries = enum_opt(&PRUNE, &p, "entries", &["caches", "vms"])?.unwrap_or("caches");
    let older: Option<u64> = int_opt(&PRUNE, &p, "older-than")?;
    let budget: Option<u64> = match int_opt::<u64>(&PRUNE, &p, "space-budget")? {
        Some(b) => Some(b),
        None => int_opt(&PRUNE, &p, "cache-budget")?,
    };
    if older.is_none() && budget.is_none() && !p.has("gc") {
        return Err(usage_error(
            &PRUNE,
            "at least one pruning criteria must be specified",
        ));
    }
    let home = tart_home()?;
    gc_tmp(&home);
    // Candidates: (path, accessed, allocated bytes)
    let mut cands: Vec<(PathBuf, i64, u64)> = if entries == "vms" {
        local_vms(&home)
            .into_iter()
            .map(|n| vm_dir(&home, &n))
            .filter(|d| running_pid(d).is_none())
            .map(|d| {
                let a = sizes(&d).1;
                (d.clone(), atime(&d), a)
            })
            .collect()
    } else {
        oci_entries(&home)
            .into_iter()
            .filter(|e| !e.2)
            .map(|(_, d, _)| {
                let a = sizes(&d).1;
                (d.clone(), atime(&d), a)
            })
            .collect()
    };
    if let Some(days) = older {
        let limit = now_secs() - days as i64 * 86400;
        cands.retain(|c| {
            if c.1 < limit {
                rm_rf(&c.0);
                false
            } else {
                true
            }
        });
    }
    if let Some(gb) = budget {
        cands.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut used = 0u64;
        for c in &cands {
            used += c.2;
            if used > gb * 1_000_000_000 {
                rm_rf(&c.0);
            }
        }
    }
    if entries == "caches" {
        // Drop tag links whose digest is gone.
        for (_, p, is_tag) in oci_entries(&home) {
            if is_tag && !p.exists() {
                let _ = fs::remove_file(&p);
            }
        }
        let _ = gc_digests;
    }
    Ok(())
}

// ---------- ip ----------

const IP: Cmd = Cmd {
    name: "ip",
    opts: &[opt("wait", "wait"), opt("resolver", "resolver")],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart ip <name> [--wait <wait>] [--resolver <resolver>]",
};

/// The runtime record `tart run` writes while the VM runs.
pub fn run_record(dir: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(dir.join("sim-run.json")).ok()?).ok()
}

pub fn ip(args: &[String]) -> R<()> {
    let p = parse(&IP, args)?;
    let wait: u16 = int_opt(&IP, &p, "wait")?.unwrap_or(0);
    let resolver = enum_opt(&IP, &p, "resolver", &["dhcp", "arp", "agent"])?.unwrap_or("dhcp");
    let home = tart_home()?;
    gc_tmp(&home);
    let d = open_vm(&home, &p.pos[0])?;
    let cfg = read_config(&d)?;
    let mac = cfg_mac(&cfg);
    let sim = SimVm::load(&d, &cfg_os(&cfg));
    let start = Instant::now();
    loop {
        let found = match resolver {
            "dhcp" => lease_for(&mac)?,
            "arp" => {
                // ARP entries exist only while the guest is up (and talks on the network).
                if running_pid(&d).is_some() {
                    lease_for(&mac)?
                } else {
                    None
                }
            }
            _ => {
                if running_pid(&d).is_some() && sim.agent {
                    run_record(&d)
                        .filter(|r| r.get("ready").and_then(|v| v.as_bool()).unwrap_or(false))
                        .and_then(|r| r.get("ip").and_then(|v| v.as_str()).map(|s| s.to_string()))
                } else {
                    None
                }
            }
        };
        if let Some(ip) = found {
            println!("{ip}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        if start.elapsed() >= Duration::from_secs(wait as u64) {
            break;
        }
    }
    let mut msg = "no IP address found".to_string();
    if running_pid(&d).is_none() {
        msg.push_str(", is your VM running?");
    }
    if resolver == "agent" {
        msg.push_str(" (also make sure that Guest agent for Tart is running inside of a VM)");
    } else if resolver == "arp" && cfg_os(&cfg) == "linux" {
        msg.push_str(" (not all Linux distributions are compatible with the ARP resolver)");
    }
    Err(Fail::Bare(msg, 1))
}

// ---------- exec ----------

const EXEC: Cmd = Cmd {
    name: "exec",
    opts: &[sflag("interactive", 'i'), sflag("tty", 't')],
    positionals: &["name", "command"],
    min: 1,
    repeating_last: false,
    passthrough: true,
    usage: "tart exec [-i] [-t] <name> <command> ...",
};

pub fn exec(args: &[String]) -> R<()> {
    let p = parse(&EXEC, args)?;
    let home = tart_home()?;
    gc_tmp(&home);
    let name = &p.pos[0];
    let d = open_vm(&home, name)?;
    let cfg = read_config(&d)?;
    let sim = SimVm::load(&d, &cfg_os(&cfg));
    let Some(run_pid) = running_pid(&d) else {
        return Err(Fail::Bare(format!("VM \"{name}\" is not running"), 2));
    };
    let rec = run_record(&d);
    let ready = rec
        .as_ref()
        .and_then(|r| r.get("ready"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let init = rec
        .as_ref()
        .and_then(|r| r.get("init_pid"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0) as i32;
    let rec_pid = rec
        .as_ref()
        .and_then(|r| r.get("pid"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0) as i32;
    let started = rec
        .as_ref()
        .and_then(|r| r.get("started"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let agent_up = match sim.faults.agent_starts_after_ms {
        Some(ms) => (crate::util::now_secs() - started) * 1000 >= ms as i64,
        None => true,
    };
    if !sim.agent || !ready || !agent_up || rec_pid != run_pid || init <= 0 {
        std::thread::sleep(Duration::from_millis(1500));
        return Err(Fail::Bare(
            format!(
                "Failed to connect to the VM using its control socket: rpc error: code = Unavailable desc = connection error: desc = \"transport: failed to connect to vsock port 8080 of VM \\\"{name}\\\": connection refused\", is the Tart Guest Agent running?"
            ),
            1,
        ));
    }
    if p.pos.len() < 2 {
        return Err(Fail::Error("exec: no command".into()));
    }
    if p.has("tty") && unsafe { libc::isatty(1) } == 0 {
        // 2.35.0 crashes on a terminal-size lookup when stdout is not a terminal.
        eprintln!("Fatal error: Unexpectedly found nil while unwrapping an Optional value");
        unsafe {
            libc::signal(libc::SIGTRAP, libc::SIG_DFL);
            libc::raise(libc::SIGTRAP);
        }
        return Err(Fail::Exit(133));
    }
    crate::run::exec_in_guest(init, &sim, &p.pos[1..], p.has("interactive"))
}

// ---------- fqn / rename ----------

const FQN: Cmd = Cmd {
    name: "fqn",
    opts: &[],
    positionals: &["name"],
    min: 1,
    repeating_last: false,
    passthrough: false,
    usage: "tart fqn <name>",
};

pub fn fqn(args: &[String]) -> R<()> {
    let p = parse(&FQN, args)?;
    let home = tart_home()?;
    let n = &p.pos[0];
    match parse_remote(n) {
        Some(r) => match oci::cached_digest(&home, &r) {
            Some(d) => println!("{}@sha256:{d}", r.repo()),
            None => {
                return Err(Fail::Bare(
                    format!(
                        "OCI storage error: {} is not a digest and doesn't point to a digest",
                        r.full()
                    ),
                    1,
                ))
            }
        },
        None => println!("{n}"),
    }
    Ok(())
}

const RENAME: Cmd = Cmd {
    name: "rename",
    opts: &[],
    positionals: &["name", "new-name"],
    min: 2,
    repeating_last: false,
    passthrough: false,
    usage: "tart rename <name> <new-name>",
};

pub fn rename(args: &[String]) -> R<()> {
    let p = parse(&RENAME, args)?;
    let home = tart_home()?;
    let (old, new) = (&p.pos[0], &p.pos[1]);
    if new.contains('/') {
        return Err(usage_error(&RENAME, "<new-name> should be a local name"));
    }
    if !vm_dir(&home, old).is_dir() {
        return Err(usage_error(
            &RENAME,
            format!("failed to rename a non-existent local VM: {old}"),
        ));
    }
    if vm_dir(&home, new).exists() {
        return Err(usage_error(
            &RENAME,
            format!("failed to rename VM {old}, target VM {new} already exists, delete it first!"),
        ));
    }
    gc_tmp(&home);
    fs::rename(vm_dir(&home, old), vm_dir(&home, new)).map_err(|e| Fail::Error(e.to_string()))
}
