//! Paths, Apple-style JSON printing, file locks, randomness, time, the simulated DHCP
//! lease table.

use crate::Fail;
use serde_json::Value;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The runner user's home as the user database has it (`getpwuid`), which no environment
/// variable changes on a Mac. The simulated Mac's user database is `TART_SIM_USER_HOME`
/// (set by the test bed), else this machine's.
pub fn user_db_home() -> PathBuf {
    if let Some(h) = std::env::var_os("TART_SIM_USER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    // SAFETY: getpwuid's result is read before any other call could reuse its buffer.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_dir.is_null() {
            let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
            return PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
        }
    }
    PathBuf::from("/")
}

/// Foundation's `homeDirectoryForCurrentUser`, where Tart finds `~/.docker/config.json` and
/// its default home: `CFFIXED_USER_HOME`, else the user database. Not `HOME`.
pub fn foundation_home() -> PathBuf {
    std::env::var_os("CFFIXED_USER_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(user_db_home)
}

pub fn tart_home() -> Result<PathBuf, Fail> {
    // Tart takes any TART_HOME that is set as a path, an empty one too:
    // `URL(fileURLWithPath: "")` is the working directory.
    let home = match std::env::var_os("TART_HOME") {
        Some(h) if h.is_empty() => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        Some(h) => PathBuf::from(h),
        None => foundation_home().join(".tart"),
    };
    if !home.is_dir() {
        if let Err(e) = fs::create_dir_all(&home) {
            return Err(Fail::Bare(
                format!(
                    "TART_HOME is invalid: {} does not exist, yet we can't create it: {}",
                    home.display(),
                    e
                ),
                1,
            ));
        }
    }
    for d in ["vms", "cache/OCIs", "tmp"] {
        let _ = fs::create_dir_all(home.join(d));
    }
    Ok(home)
}

pub fn sim_host() -> PathBuf {
    let p = match std::env::var_os("TART_SIM_HOST") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from("/tmp/tart-sim-host"),
    };
    let _ = fs::create_dir_all(p.join("macos-slots"));
    p
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf
}

pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A random locally administered unicast MAC, as `VZMACAddress.randomLocallyAdministered`.
pub fn random_mac() -> String {
    let mut b = random_bytes(6);
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A deterministic 64-hex "digest" (not SHA-256; only needs to be stable and unique).
pub fn pseudo_digest(data: &str) -> String {
    let mut out = String::new();
    for seed in 0u64..4 {
        let mut h: u64 = 0xcbf29ce484222325 ^ seed.wrapping_mul(0x9e3779b97f4a7c15);
        for b in data.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51afd7ed558ccd);
        h ^= h >> 33;
        out.push_str(&format!("{h:016x}"));
    }
    out
}

// ---------- Apple JSONEncoder(.prettyPrinted) style output ----------

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_val(v: &Value, ind: usize, out: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => json_str(s, out),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[\n\n");
                out.push_str(&pad(ind));
                out.push(']');
                return;
            }
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                out.push_str(&pad(ind + 1));
                json_val(x, ind + 1, out);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(ind));
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{\n\n");
                out.push_str(&pad(ind));
                out.push('}');
                return;
            }
            out.push_str("{\n");
            let n = m.len();
            for (i, (k, x)) in m.iter().enumerate() {
                out.push_str(&pad(ind + 1));
                json_str(k, out);
                out.push_str(" : ");
                json_val(x, ind + 1, out);
                if i + 1 < n {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(ind));
            out.push('}');
        }
    }
}

/// Pretty JSON as Apple's `JSONEncoder` with `.prettyPrinted` writes it: two-space indent,
/// `"key" : value`, escaped slashes.
pub fn apple_json(v: &Value) -> String {
    let mut s = String::new();
    json_val(v, 0, &mut s);
    s
}

/// Writes a file in place (same inode: the fcntl lock of a running VM survives).
pub fn write_in_place(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)
}

/// Plain text table as Tart prints it: columns padded to the widest cell, one space
/// between, the whole output trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut lines = vec![fmt_row(header.iter().map(|s| s.to_string()).collect())];
    for r in rows {
        lines.push(fmt_row(r.clone()));
    }
    lines.join("\n").trim().to_string()
}

// ---------- locks ----------

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Opens (creating) a lock file and tries a non-blocking exclusive flock. Returns the
/// file while the lock is held.
pub fn try_flock(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Some(f)
    } else {
        None
    }
}

/// Blocking exclusive flock (bounded by the caller's patience: these are short sections).
pub fn flock_wait(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if r == 0 {
        Some(f)
    } else {
        None
    }
}

/// PID of the process holding an fcntl write lock on `path`, if any.
pub fn lock_holder(path: &Path) -> Option<i32> {
    let f = File::open(path).ok()?;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if r != 0 || i64::from(fl.l_type) == i64::from(libc::F_UNLCK) {
        None
    } else {
        Some(fl.l_pid)
    }
}

/// Takes the fcntl write lock on a file (non-blocking). Returns the open file on success.
pub fn fcntl_lock(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 {
        Some(f)
    } else {
        None
    }
}

/// Updates only the access time of a path (what `list` shows as `Accessed`).
pub fn touch_atime(p: &Path) {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0);
    }
}

pub fn atime(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).map(|m| m.atime()).unwrap_or(0)
}

pub fn iso8601(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `RelativeDateTimeFormatter` (full units) style: "3 minutes ago".
pub fn relative(t: i64) -> String {
    let d = now_secs() - t;
    if d <= 0 {
        return "in 0 seconds".into();
    }
    let (n, unit) = if d < 60 {
        (d, "second")
    } else if d < 3600 {
        (d / 60, "minute")
    } else if d < 86400 {
        (d / 3600, "hour")
    } else if d < 7 * 86400 {
        (d / 86400, "day")
    } else if d < 30 * 86400 {
        (d / (7 * 86400), "week")
    } else if d < 365 * 86400 {
        (d / (30 * 86400), "month")
    } else {
        (d / (365 * 86400), "year")
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Recursively removes a path, ignoring errors.
pub fn rm_rf(p: &Path) {
    if p.is_symlink() || p.is_file() {
        let _ = fs::remove_file(p);
    } else if p.exists() {
        let _ = fs::remove_dir_all(p);
    }
}

/// Copies a directory tree with `cp -a` (keeps sparse files sparse, ownership, modes).
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp -a {} {} failed",
            src.display(),
            dst.display()
        )))
    }
}

// ---------- simulated DHCP leases (per host scope, /var/db/dhcpd_leases format) ----------

pub struct Lease {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub expiry: i64,
}

/// bootpd's leases file, at its place under the simulated Mac's root.
pub fn leases_path() -> PathBuf {
    sim_host().join("var/db/dhcpd_leases")
}

fn norm_mac(m: &str) -> String {
    m.split(':')
        .map(|o| format!("{:0>2}", o.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses the lease file; a malformed file is an error as in Tart (`Leases.swift`): split
/// at `\n` with empty lines dropped (and not counted), `{`/`}` only when alone on their
/// line, leading spaces and tabs dropped from other lines (nothing else trimmed), a
/// `key=value` outside a block taken as a body, a file ending inside a body refused.
pub fn read_leases() -> Result<Vec<Lease>, Fail> {
    let Ok(text) = fs::read_to_string(leases_path()) else {
        return Ok(vec![]);
    };
    #[derive(PartialEq)]
    enum State {
        Nowhere,
        Start,
        Body,
        End,
    }
    let mut state = State::Nowhere;
    let mut out = vec![];
    let mut kv: Vec<(String, String)> = vec![];
    for (i, line) in text.split('\n').filter(|l| !l.is_empty()).enumerate() {
        let bad = |msg: &str| {
            Fail::Error(format!(
                "UnexpectedFormat(name: \"unexpected DHCPD leases file format\", message: \"{msg}\", line: {})",
                i + 1
            ))
        };
        if line == "{" {
            if state != State::Nowhere && state != State::End {
                return Err(bad("unexpected lease block start ({)"));
            }
            state = State::Start;
        } else if line == "}" {
            if state != State::Body {
                return Err(bad("unexpected lease block end (})"));
            }
            let fields = std::mem::take(&mut kv);
            state = State::End;
            let g = |k: &str| fields.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
            let (Some(ip), Some(hw), Some(lease)) = (g("ip_address"), g("hw_address"), g("lease"))
            else {
                continue;
            };
            let mac = hw.split_once(',').map(|(_, m)| m.to_string()).unwrap_or(hw);
            let expiry = i64::from_str_radix(lease.trim_start_matches("0x"), 16).unwrap_or(0);
            out.push(Lease {
                name: g("name").unwrap_or_default(),
                ip,
                mac: norm_mac(&mac),
                expiry,
            });
        } else {
            let content = line.trim_start_matches([' ', '\t']);
            if content.is_empty() {
                continue;
            }
            // Swift's split drops empty parts: `key=` and `=value` are a key alone.
            let Some((k, v)) = content
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            else {
                return Err(bad("key-value pair with only a key"));
            };
            kv.push((k.to_string(), v.to_string()));
            state = State::Body;
        }
    }
    if state == State::Start || state == State::Body {
        return Err(Fail::Error(
            "Truncated(name: \"truncated DHCPD leases file\")".into(),
        ));
    }
    Ok(out)
}

/// The newest unexpired lease for a MAC.
pub fn lease_for(mac: &str) -> Result<Option<String>, Fail> {
    let now = now_secs();
    let mac = norm_mac(mac);
    Ok(read_leases()?
        .into_iter()
        .filter(|l| l.mac == mac && l.expiry > now)
        .max_by_key(|l| l.expiry)
        .map(|l| l.ip))
}

pub fn lease_seconds() -> i64 {
    std::env::var("TART_SIM_LEASE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(86400)
}

/// Records a lease (replacing older leases of that MAC or that IP), as the macOS DHCP
/// server does when a guest boots.
pub fn write_lease(name: &str, mac: &str, ip: &str) {
    let host = sim_host();
    let _g = flock_wait(&host.join("dhcpd_leases.lock"));
    let mac = norm_mac(mac);
    let mut leases = read_leases().unwrap_or_default();
    leases.retain(|l| l.mac != mac && l.ip != ip);
    leases.push(Lease {
        name: name.into(),
        ip: ip.into(),
        mac: mac.clone(),
        expiry: now_secs() + lease_seconds(),
    });
    let mut s = String::new();
    for l in &leases {
        // macOS writes the hardware address without leading zeros in each octet.
        let hw: Vec<String> = l
            .mac
            .split(':')
            .map(|o| o.trim_start_matches('0').to_string())
            .map(|o| if o.is_empty() { "0".into() } else { o })
            .collect();
        let hw = hw.join(":");
        s.push_str(&format!(
            "{{\n\tname={}\n\tip_address={}\n\thw_address=1,{}\n\tidentifier=1,{}\n\tlease=0x{:x}\n}}\n",
            l.name, l.ip, hw, hw, l.expiry
        ));
    }
    let path = leases_path();
    let tmp = path.with_file_name(format!("dhcpd_leases.{}", std::process::id()));
    let _ = fs::create_dir_all(path.parent().expect("a nested path"));
    if fs::write(&tmp, s).is_ok() {
        let _ = fs::rename(&tmp, leases_path());
    }
}

/// All unexpired leased IPs in this host scope except those of `mac`.
pub fn leased_ips_except(mac: &str) -> Vec<String> {
    let now = now_secs();
    let mac = norm_mac(mac);
    read_leases()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.mac != mac && l.expiry > now)
        .map(|l| l.ip)
        .collect()
}

pub fn user_info(name: &str) -> Option<(u32, u32, String)> {
    let c = CString::new(name).ok()?;
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned();
        Some(((*pw).pw_uid, (*pw).pw_gid, dir))
    }
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = vec![];
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..4 {
            if i <= ch.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
