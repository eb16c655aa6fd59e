//! `doctor`: checks this host for everything the driver needs before a job finds out, and
//! says how to fix each problem.
//!
//! Every check ends as pass, warn, fail or skip (a check that does not apply here, such as
//! the Mach-O checks on Linux). Each external command is bounded to a few seconds, nothing
//! on the host is changed, and the report goes to stdout as text or JSON: doctor is an
//! operator's command, not a stage. It exits with the system-failure code when a check
//! failed.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde::Serialize;
use toml::{Table, Value};

use crate::cli::Options;
use crate::failure::{Failure, StageResult};
use crate::ownership::{self, Claim};
use crate::settings::{Settings, TransportKind};
mod orchard;

use crate::orchard::settings::Backend;
use crate::state_dir::{self, StateDir, VMS};
use crate::vm::{VmName, VmState, PREFIX};

mod network;

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub options: Options,

    /// Output format: `text` (one line per check) or `json` (an array of {check, status, detail, fix})
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// gitlab-runner's config.toml, to check its `concurrent`, exec paths, shell and timeouts against these options
    #[arg(long, value_name = "FILE")]
    pub runner_config: Option<PathBuf>,

    /// Path to the gitlab-runner executable [default: gitlab-runner, looked up on PATH]
    #[arg(long, value_name = "PATH")]
    pub gitlab_runner: Option<String>,

    /// Which VMs to check for: this Mac's Tart, or an Orchard controller's fleet
    #[arg(long, value_enum, default_value_t = Backend::Tart)]
    pub backend: Backend,

    #[command(flatten)]
    pub network: network::NetworkArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            check: check.to_string(),
            status,
            detail,
            fix,
        });
    }
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Status::Pass, detail.into(), None);
    }
    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Warn, detail.into(), Some(fix.into()));
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Fail, detail.into(), Some(fix.into()));
    }
    fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Status::Skip, detail.into(), None);
    }
    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "PASS",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            out.push_str(&format!("{tag}  {}: {}\n", c.check, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        out.push_str(&format!(
            "\n{} passed, {} warning{}, {} failed, {} skipped\n",
            self.count(Status::Pass),
            self.count(Status::Warn),
            if self.count(Status::Warn) == 1 {
                ""
            } else {
                "s"
            },
            self.count(Status::Fail),
            self.count(Status::Skip)
        ));
        out
    }
}

/// Each external command gets this long; doctor must answer quickly even on a sick host.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);
/// Tart reads every VM's config for `list`, which can take longer on a big cache.
const LIST_LIMIT: Duration = Duration::from_secs(10);
/// `tart exec` (the exec transport) needs Tart 2.27.
const TART_EXEC_VERSION: (u64, u64) = (2, 27);
const LOW_SPACE_BYTES: u64 = 10_000_000_000;
const GB: f64 = 1e9;
const LC_UUID: u32 = 0x1b;

pub fn doctor(args: &DoctorArgs) -> StageResult {
    let mut r = Report::default();
    let settings = load_settings(&args.options, &mut r);
    if args.backend == Backend::Orchard {
        orchard::check(&settings, &mut r);
        return finish(args, &r);
    }
    let tart = check_tart(&settings, &mut r);
    let runner = check_gitlab_runner(args, &mut r);
    check_lc_uuid(runner.as_deref(), &mut r);
    match &args.runner_config {
        Some(path) => check_runner_config(path, &settings, &mut r),
        None => r.skip(
            "config.toml",
            "not checked: pass --runner-config /path/to/config.toml to compare gitlab-runner's settings with these options",
        ),
    }
    let list = tart.as_deref().map(tart_list);
    check_macos_limit(&settings, list.as_ref(), &mut r);
    let seen = crate::foreign::survey(crate::tart_home::home().as_deref());
    let status = [Status::Pass, Status::Warn][usize::from(seen.fix.is_some())];
    r.add(
        "VMs not started by this driver",
        status,
        seen.detail,
        seen.fix,
    );
    check_directories(&settings, &mut r);
    check_tart_home(list.as_ref(), &mut r);
    check_vms(&settings, list.as_ref(), &mut r);
    check_state_dir(&settings, &mut r);
    check_socket_path(&settings, &mut r);
    check_ssh(&settings, &mut r);
    network::check_tool_path(&mut r);
    check_softnet(&settings, &mut r);
    network::check_dhcp_pool(&args.network, &settings, &mut r);
    network::check_local_network(tart.as_deref(), list.as_ref(), &mut r);
    check_gui_session(&mut r);
    finish(args, &r)
}

/// Prints the report; fails when a check failed.
fn finish(args: &DoctorArgs, r: &Report) -> StageResult {
    match args.format {
        Format::Text => print!("{}", r.text()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&r.checks).expect("checks serialize")
        ),
    }
    let failed: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.check.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::System(anyhow!(
            "{} check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        )))
    }
}

/// The admin's options; when they do not load, the defaults (with the given tart and state
/// dir) so that the other checks still run.
fn load_settings(options: &Options, r: &mut Report) -> Settings {
    match Settings::load(options) {
        Ok(s) => {
            let from = match &options.config {
                Some(file) => format!("flags and {}", file.display()),
                None => "flags and defaults".to_string(),
            };
            r.pass(
                "driver options",
                format!(
                    "valid ({from}): concurrency {}, macOS VM limit {}, boot timeout {}s, transport {}",
                    s.concurrency,
                    s.macos_vm_limit,
                    s.timeout_secs,
                    match s.transport {
                        TransportKind::Ssh => "ssh",
                        TransportKind::Exec => "exec",
                        TransportKind::Auto => "auto",
                    }
                ),
            );
            s
        }
        Err(e) => {
            r.fail(
                "driver options",
                format!("{e:#}"),
                "correct that option on the command line or in the --config file; every stage would fail the same way",
            );
            let fallback = Options {
                tart_executable: options.tart_executable.clone(),
                state_dir: options.state_dir.clone(),
                ..Default::default()
            };
            Settings::load(&fallback)
                .or_else(|_| Settings::load(&Options::default()))
                .expect("default settings are valid")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Executables and bounded commands

/// Finds `exe` as the OS would: a path if it has a slash, else the first match on PATH.
/// A match that is not executable is returned when nothing better exists, so the caller
/// can say so.
fn resolve(exe: &str) -> Option<PathBuf> {
    if exe.contains('/') {
        let p = PathBuf::from(exe);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    let mut fallback = None;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(exe);
        if candidate.is_file() {
            if is_executable(&candidate) {
                return Some(candidate);
            }
            fallback.get_or_insert(candidate);
        }
    }
    fallback
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// The error line of stderr (past Tart's housekeeping warning), else of stdout.
    fn message(&self) -> String {
        match crate::tart_message::error_line(&self.stderr) {
            line if line.is_empty() => crate::tart_message::error_line(&self.stdout),
            line => line,
        }
    }
}

/// Runs a command to completion within `limit`; kills it when it takes longer.
fn run_bounded(exe: &Path, args: &[&str], limit: Duration) -> Result<Output, String> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    // Readers on threads: a grandchild that keeps the pipe open must not hang doctor.
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        rx
    };
    let out = reader(Box::new(child.stdout.take().expect("piped")));
    let err = reader(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let what = std::iter::once(exe.display().to_string())
                    .chain(args.iter().map(|a| a.to_string()))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(format!(
                    "`{what}` did not finish within {}s",
                    limit.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for {}: {e}", exe.display())),
        }
    };
    let grace = Duration::from_millis(500);
    Ok(Output {
        code: status.code(),
        stdout: out.recv_timeout(grace).unwrap_or_default(),
        stderr: err.recv_timeout(grace).unwrap_or_default(),
    })
}

/// `major.minor[.patch]` at the start of `text` (after an optional `v`).
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let t = text.trim().trim_start_matches('v');
    let t = t
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = t.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

// ---------------------------------------------------------------------------------------
// tart and gitlab-runner

/// Checks tart; returns its path when it can be run.
fn check_tart(settings: &Settings, r: &mut Report) -> Option<PathBuf> {
    const NAME: &str = "tart";
    let exe = &settings.tart_executable;
    let Some(path) = resolve(exe) else {
        r.fail(
            NAME,
            format!("`{exe}` not found (PATH={})", std::env::var("PATH").unwrap_or_default()),
            "install Tart (`brew install openai/tools/tart`; formerly cirruslabs/cli/tart) or give its absolute path with --tart-executable: gitlab-runner started by launchd has a minimal PATH",
        );
        return None;
    };
    if !is_executable(&path) {
        r.fail(
            NAME,
            format!("{} is not executable", path.display()),
            format!(
                "`chmod +x {}`, or point --tart-executable at the real tart",
                path.display()
            ),
        );
        return None;
    }
    let out = match run_bounded(&path, &["--version"], COMMAND_LIMIT) {
        Ok(out) if out.ok() => out,
        Ok(out) => {
            r.fail(
                NAME,
                format!("`{} --version` failed: {}", path.display(), out.message()),
                "reinstall Tart; run `tart --version` by hand to see what is wrong",
            );
            return None;
        }
        Err(e) => {
            r.fail(
                NAME,
                e,
                "reinstall Tart; run `tart --version` by hand to see what is wrong",
            );
            return None;
        }
    };
    let version = out.stdout.lines().next().unwrap_or("").trim().to_string();
    let needs_exec = settings.transport != TransportKind::Ssh;
    match parse_version(&version) {
        Some((ma, mi, _)) if (ma, mi) < TART_EXEC_VERSION => {
            let detail = format!(
                "{} is version {version}, older than 2.27: no `tart exec`, no control socket",
                path.display()
            );
            let fix = "upgrade Tart (`brew upgrade tart`) to 2.27 or later";
            if needs_exec {
                r.fail(NAME, format!("{detail}, which --transport exec/auto needs"), fix);
            } else {
                r.warn(NAME, detail, fix);
            }
        }
        Some(_) => r.pass(NAME, format!("{}, version {version}", path.display())),
        None if version == "SNAPSHOT" => r.pass(
            NAME,
            format!("{}, a development build (SNAPSHOT)", path.display()),
        ),
        None => r.warn(
            NAME,
            format!("{}: cannot read a version from `{version}`", path.display()),
            "check that --tart-executable is Tart itself and not a wrapper that prints something else",
        ),
    }
    Some(path)
}

fn check_gitlab_runner(args: &DoctorArgs, r: &mut Report) -> Option<PathBuf> {
    const NAME: &str = "gitlab-runner";
    let exe = args.gitlab_runner.as_deref().unwrap_or("gitlab-runner");
    let fix = "install gitlab-runner 17.6 or later (`brew install gitlab-runner`), or give its path with --gitlab-runner";
    let Some(path) = resolve(exe) else {
        r.fail(NAME, format!("`{exe}` not found on PATH"), fix);
        return None;
    };
    if !is_executable(&path) {
        r.fail(NAME, format!("{} is not executable", path.display()), fix);
        return None;
    }
    match run_bounded(&path, &["--version"], COMMAND_LIMIT) {
        Ok(out) if out.ok() => {
            let version = out
                .stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .map(|v| v.trim().to_string());
            match version {
                Some(v) => r.pass(NAME, format!("{}, version {v}", path.display())),
                None => r.warn(
                    NAME,
                    format!("{}: `--version` printed no `Version:` line", path.display()),
                    "check that this is GitLab Runner",
                ),
            }
        }
        Ok(out) => r.fail(
            NAME,
            format!("`{} --version` failed: {}", path.display(), out.message()),
            fix,
        ),
        Err(e) => r.fail(NAME, e, fix),
    }
    Some(path)
}

// ---------------------------------------------------------------------------------------
// Mach-O LC_UUID

fn check_lc_uuid(runner: Option<&Path>, r: &mut Report) {
    let driver = std::env::current_exe().ok();
    if !cfg!(target_os = "macos") {
        let why = "not a macOS host: LC_UUID matters only for macOS 15+'s Local Network permission; run doctor on the Mac";
        r.skip("gitlab-runner LC_UUID", why);
        r.skip("driver LC_UUID", why);
        return;
    }
    match runner {
        Some(path) => uuid_check(
            "gitlab-runner LC_UUID",
            path,
            "install gitlab-runner 17.6 or later (Homebrew's build carries LC_UUID), or allow local-network access system-wide as in Apple's TN3179",
            r,
        ),
        None => r.skip("gitlab-runner LC_UUID", "gitlab-runner not found"),
    }
    match driver {
        Some(path) => uuid_check(
            "driver LC_UUID",
            &path,
            "rebuild the driver with Apple's default linker settings (do not link with -no_uuid)",
            r,
        ),
        None => r.skip("driver LC_UUID", "cannot locate this executable"),
    }
}

fn uuid_check(name: &str, path: &Path, fix: &str, r: &mut Report) {
    match macho_uuids(path) {
        Ok(slices) if slices.iter().all(Option::is_some) => r.pass(
            name,
            format!(
                "{}: {}",
                path.display(),
                slices.into_iter().flatten().collect::<Vec<_>>().join(", ")
            ),
        ),
        Ok(_) => r.fail(
            name,
            format!(
                "{} has no LC_UUID: macOS 15+ denies it the Local Network permission, so jobs hang at \"waiting for SSH\"",
                path.display()
            ),
            fix,
        ),
        Err(e) => r.warn(
            name,
            format!("{}: {e}", path.display()),
            "point at the real executable, not a wrapper script",
        ),
    }
}

/// The LC_UUID of each architecture slice of a Mach-O file (None for a slice without one).
fn macho_uuids(path: &Path) -> Result<Vec<Option<String>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|_| "truncated Mach-O file".to_string())?;
        Ok(buf)
    };
    let head = read(0, 8).map_err(|_| "not a Mach-O file".to_string())?;
    let magic = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    match magic {
        // Universal binaries: a big-endian table of slices. Java class files share the
        // magic but have a large "count" (their version), so bound it.
        0xcafe_babe | 0xcafe_babf => {
            let wide = magic == 0xcafe_babf;
            let count = be32(&head, 4) as usize;
            if count == 0 || count > 32 {
                return Err("not a Mach-O file".into());
            }
            let entry = if wide { 32 } else { 20 };
            let table = read(8, count * entry)?;
            (0..count)
                .map(|i| {
                    let e = &table[i * entry..(i + 1) * entry];
                    let offset = if wide {
                        be64(e, 8)
                    } else {
                        u64::from(be32(e, 8))
                    };
                    thin_uuid(&read, offset)
                })
                .collect()
        }
        _ => Ok(vec![thin_uuid(&read, 0)?]),
    }
}

fn thin_uuid(
    read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
    offset: u64,
) -> Result<Option<String>, String> {
    let header = read(offset, 32).or_else(|_| read(offset, 28))?;
    let (big, wide) = match header[0..4] {
        [0xfe, 0xed, 0xfa, 0xce] => (true, false),
        [0xfe, 0xed, 0xfa, 0xcf] => (true, true),
        [0xce, 0xfa, 0xed, 0xfe] => (false, false),
        [0xcf, 0xfa, 0xed, 0xfe] => (false, true),
        _ => return Err("not a Mach-O file".into()),
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if big {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let ncmds = u32_at(&header, 16) as usize;
    let size = u32_at(&header, 20) as usize;
    if size > 16 << 20 {
        return Err("implausible load-command size".into());
    }
    let cmds = read(offset + if wide { 32 } else { 28 }, size)?;
    let mut at = 0;
    for _ in 0..ncmds {
        if at + 8 > cmds.len() {
            return Err("truncated load commands".into());
        }
        let cmd = u32_at(&cmds, at);
        let cmdsize = u32_at(&cmds, at + 4) as usize;
        if cmdsize < 8 || at + cmdsize > cmds.len() {
            return Err("corrupt load command".into());
        }
        if cmd == LC_UUID && cmdsize >= 24 {
            return Ok(Some(format_uuid(&cmds[at + 8..at + 24])));
        }
        at += cmdsize;
    }
    Ok(None)
}

fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

// ---------------------------------------------------------------------------------------
// gitlab-runner's config.toml

fn check_runner_config(path: &Path, settings: &Settings, r: &mut Report) {
    const NAME: &str = "config.toml";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            r.fail(
                NAME,
                format!("cannot read {}: {e}", path.display()),
                "give --runner-config the config.toml gitlab-runner uses (`gitlab-runner list` prints its path)",
            );
            return;
        }
    };
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            r.fail(
                NAME,
                format!("{} is not valid TOML: {first}", path.display()),
                "fix the syntax; gitlab-runner refuses to start with it",
            );
            return;
        }
    };
    let n = settings.concurrency;
    let concurrent = table
        .get("concurrent")
        .and_then(Value::as_integer)
        .unwrap_or(1);
    if concurrent > i64::from(n) {
        r.fail(
            "config.toml concurrent",
            format!(
                "concurrent = {concurrent} but --concurrency is {n}: gitlab-runner starts {concurrent} jobs and the extra ones wait for a VM slot, spending their timeout"
            ),
            format!("set concurrent = {n} in config.toml, or --concurrency {concurrent} in the driver's arguments"),
        );
    } else if concurrent < i64::from(n) {
        r.warn(
            "config.toml concurrent",
            format!("concurrent = {concurrent} but --concurrency is {n}: only {concurrent} of this host's {n} VM slots are ever used, and `auto` CPU/memory sizes VMs for {n}"),
            format!("set concurrent = {n}, or --concurrency {concurrent}"),
        );
    } else {
        r.pass(
            "config.toml concurrent",
            format!("concurrent = {concurrent}, equal to --concurrency"),
        );
    }

    let runners: Vec<&Table> = table
        .get("runners")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default();
    if runners.is_empty() {
        r.warn(
            "config.toml runners",
            format!("{} has no [[runners]]", path.display()),
            "register a runner (`gitlab-runner register --executor custom`) or write config.toml with `gitlab-runner-tart-driver runner-config`",
        );
        return;
    }
    for (i, runner) in runners.iter().enumerate() {
        let name = runner
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let executor = runner.get("executor").and_then(Value::as_str).unwrap_or("");
        if executor != "custom" {
            r.skip(
                &format!("runner {name}"),
                format!("executor `{executor}`, not the custom executor this driver serves"),
            );
            continue;
        }
        check_custom_runner(&name, runner, settings, concurrent, r);
    }
}

/// `*_exec_timeout`: gitlab-runner takes a missing or non-positive value as 3600 s.
fn exec_timeout(custom: &Table, key: &str) -> i64 {
    match custom.get(key).and_then(Value::as_integer) {
        Some(t) if t > 0 => t,
        _ => 3600,
    }
}

fn check_custom_runner(
    name: &str,
    runner: &Table,
    settings: &Settings,
    concurrent: i64,
    r: &mut Report,
) {
    let empty = Table::new();
    let custom = runner
        .get("custom")
        .and_then(Value::as_table)
        .unwrap_or(&empty);

    // Executables.
    let check = format!("runner {name}: executables");
    let mut problems = Vec::new();
    let mut fine = Vec::new();
    let mut fail = false;
    for stage in ["config", "prepare", "run", "cleanup"] {
        let key = format!("{stage}_exec");
        match custom.get(&key).and_then(Value::as_str) {
            None if stage == "config" => problems.push(format!(
                "{key} is not set (gitlab-runner then ignores the driver's builds and cache directories)"
            )),
            None => {
                fail = true;
                problems.push(format!("{key} is not set"));
            }
            Some(exe) => match resolve(exe) {
                Some(p) if is_executable(&p) => fine.push(format!("{key} {}", p.display())),
                Some(p) => {
                    fail = true;
                    problems.push(format!("{key} {} is not executable", p.display()));
                }
                None => {
                    fail = true;
                    problems.push(format!("{key} `{exe}` does not exist"));
                }
            },
        }
    }
    let exec_fix = "set config_exec, prepare_exec, run_exec and cleanup_exec under [runners.custom] to the driver's absolute path, with args [\"config\"], [\"prepare\", ...], [\"run\", ...], [\"cleanup\", ...]";
    if problems.is_empty() {
        r.pass(&check, fine.join(", "));
    } else if fail {
        r.fail(&check, problems.join("; "), exec_fix);
    } else {
        r.warn(&check, problems.join("; "), exec_fix);
    }

    // The --concurrency the stages really get, when config.toml passes one.
    let check = format!("runner {name}: --concurrency");
    let mut given: Vec<(String, String)> = Vec::new();
    for stage in ["config", "prepare", "run", "cleanup"] {
        let args: Vec<&str> = custom
            .get(&format!("{stage}_args"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (i, arg) in args.iter().enumerate() {
            let value = match arg.strip_prefix("--concurrency") {
                Some("") => args.get(i + 1).map(|v| v.to_string()),
                Some(rest) => rest.strip_prefix('=').map(str::to_string),
                None => None,
            };
            if let Some(v) = value {
                given.push((format!("{stage}_args"), v));
            }
        }
    }
    let differs: Vec<String> = given
        .iter()
        .filter(|(_, v)| v.parse::<i64>().ok() != Some(concurrent))
        .map(|(k, v)| format!("{k} has --concurrency {v}"))
        .collect();
    if !differs.is_empty() {
        r.fail(
            &check,
            format!("{}, but concurrent = {concurrent}", differs.join(", ")),
            format!("give every stage --concurrency {concurrent} (or write config.toml with `gitlab-runner-tart-driver runner-config`)"),
        );
    } else if let Some((k, v)) = given.first() {
        r.pass(
            &check,
            format!("{k}: --concurrency {v}, equal to concurrent"),
        );
    }

    // Shell: the driver runs gitlab-runner's scripts with bash.
    let check = format!("runner {name}: shell");
    match runner.get("shell").and_then(Value::as_str) {
        None | Some("bash") => r.pass(&check, "bash"),
        Some(other) => r.fail(
            &check,
            format!("shell = \"{other}\": gitlab-runner would generate {other} scripts, which the driver runs with bash"),
            "set shell = \"bash\" in this [[runners]] section (the guest's login shell is chosen with --shell)",
        ),
    }

    // Timeouts.
    let check = format!("runner {name}: timeouts");
    let prepare = exec_timeout(custom, "prepare_exec_timeout");
    let cleanup = exec_timeout(custom, "cleanup_exec_timeout");
    let config = exec_timeout(custom, "config_exec_timeout");
    let graceful = match custom
        .get("graceful_kill_timeout")
        .and_then(Value::as_integer)
    {
        Some(t) if t > 0 => t,
        _ => 600,
    };
    let boot = settings.timeout_secs as i64;
    let summary = format!(
        "config {config}s, prepare {prepare}s, cleanup {cleanup}s, graceful kill {graceful}s"
    );
    let fix = "under [runners.custom]: prepare_exec_timeout = 3600, cleanup_exec_timeout = 600, config_exec_timeout = 300, graceful_kill_timeout = 120";
    if prepare < boot {
        r.fail(
            &check,
            format!("prepare_exec_timeout = {prepare}s is shorter than the VM boot timeout (--timeout {boot}s): gitlab-runner kills prepare before the VM may be up ({summary})"),
            fix,
        );
    } else {
        let mut short = Vec::new();
        if prepare < boot + 600 {
            short.push(format!(
                "prepare_exec_timeout = {prepare}s leaves under 10 minutes beyond the boot timeout to pull an image"
            ));
        }
        if cleanup < 60 {
            short.push(format!(
                "cleanup_exec_timeout = {cleanup}s may not let cleanup stop and delete the VM"
            ));
        }
        if config < 10 {
            short.push(format!("config_exec_timeout = {config}s"));
        }
        if graceful < 30 {
            short.push(format!(
                "graceful_kill_timeout = {graceful}s may not let a cancelled job delete its VM"
            ));
        }
        if short.is_empty() {
            r.pass(&check, summary);
        } else {
            r.warn(&check, short.join("; "), fix);
        }
    }

    // limit: jobs of this runner at once (0 = no limit of its own).
    let check = format!("runner {name}: limit");
    let n = i64::from(settings.concurrency);
    match runner.get("limit").and_then(Value::as_integer) {
        Some(l) if l < 0 => r.fail(
            &check,
            format!("limit = {l} is negative"),
            format!("set limit between 1 and {n}"),
        ),
        None | Some(0) => r.pass(
            &check,
            format!(
                "no limit of its own; concurrent ({concurrent}) and the host's {n} slots bound it"
            ),
        ),
        Some(l) if l > n => r.warn(
            &check,
            format!("limit = {l} exceeds --concurrency {n}: jobs beyond {n} only wait for a slot"),
            format!("set limit = {n} or less"),
        ),
        Some(l) => r.pass(&check, format!("limit = {l}")),
    }
}

// ---------------------------------------------------------------------------------------
// Tart's VMs and images

struct TartList {
    entries: Result<Vec<serde_json::Value>, String>,
}

fn tart_list(tart: &Path) -> TartList {
    let entries = match run_bounded(tart, &["list", "--format", "json"], LIST_LIMIT) {
        Ok(out) if out.ok() => serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
            .map_err(|e| format!("cannot parse `tart list --format json`: {e}")),
        Ok(out) => Err(format!("`tart list` failed: {}", out.message())),
        Err(e) => Err(e),
    };
    TartList { entries }
}

fn field<'a>(entry: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    entry.get(key)
}

fn entry_name(entry: &serde_json::Value) -> &str {
    field(entry, "Name").and_then(|v| v.as_str()).unwrap_or("")
}

fn entry_is_oci(entry: &serde_json::Value) -> bool {
    field(entry, "Source")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.eq_ignore_ascii_case("oci"))
}

fn entry_is_running(entry: &serde_json::Value) -> bool {
    field(entry, "State").and_then(|v| v.as_str()) == Some("running")
        || field(entry, "Running").and_then(|v| v.as_bool()) == Some(true)
}

/// On-disk size in GB: `Size` (an int in `list`), or `SizeOnDisk` before Tart 2.31.
fn entry_size_gb(entry: &serde_json::Value) -> Option<f64> {
    let v = field(entry, "Size").or_else(|| field(entry, "SizeOnDisk"))?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `host/org/image` of `host/org/image:tag` or `host/org/image@sha256:…`.
fn image_repository(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
        _ => name.to_string(),
    }
}

fn looks_macos(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "macos", "sonoma", "sequoia", "tahoe", "ventura", "monterey", "xcode",
    ]
    .iter()
    .any(|w| n.contains(w))
}

fn check_macos_limit(settings: &Settings, list: Option<&TartList>, r: &mut Report) {
    const NAME: &str = "macOS VM limit";
    let (n, limit) = (settings.concurrency, settings.macos_vm_limit);
    if limit > 2 {
        r.fail(
            NAME,
            format!("--macos-vm-limit {limit}: Apple's Virtualization framework runs at most 2 macOS guests; the third fails with \"The number of VMs exceeds the system limit\""),
            "set --macos-vm-limit 2 (or leave it out)",
        );
        return;
    }
    if n <= limit {
        r.pass(
            NAME,
            format!("--concurrency {n} fits Apple's limit of {limit} macOS guests"),
        );
        return;
    }
    let mut macos: Vec<String> = list
        .and_then(|l| l.entries.as_ref().ok())
        .map(|e| {
            e.iter()
                .map(entry_name)
                .filter(|n| !n.starts_with(PREFIX) && looks_macos(n))
                .map(image_repository)
                .collect()
        })
        .unwrap_or_default();
    if let Some(image) = settings.default_image.as_deref().filter(|i| looks_macos(i)) {
        macos.push(image.to_string());
    }
    macos.sort();
    macos.dedup();
    if macos.is_empty() {
        r.pass(
            NAME,
            format!("--concurrency {n} with no macOS image in sight; macOS jobs would still run at most {limit} at a time"),
        );
    } else {
        r.warn(
            NAME,
            format!(
                "--concurrency {n} but Apple allows {limit} macOS guests: with macOS images ({}) at most {limit} jobs run at once and the others wait for a macOS slot, spending their boot timeout",
                macos.join(", ")
            ),
            format!("on a host that runs only macOS jobs set concurrent and --concurrency to {limit}; keep {n} only when Linux jobs fill the other slots"),
        );
    }
}

/// Bytes free for this user on the file system holding `path` (or its nearest existing
/// ancestor).
fn free_bytes(path: &Path) -> Option<(u64, PathBuf)> {
    let existing = path.ancestors().find(|p| p.exists())?.to_path_buf();
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64 * st.f_frsize as u64, existing))
}

fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB)
}

fn check_directories(settings: &Settings, r: &mut Report) {
    let mut dirs: Vec<(String, &Path, bool, bool)> = Vec::new();
    match &settings.builds_dir {
        Some(d) => dirs.push(("builds dir".into(), d, true, false)),
        None => r.skip(
            "builds dir",
            "--builds-dir not set: builds stay on each VM's own disk",
        ),
    }
    match &settings.cache_dir {
        Some(d) => dirs.push(("cache dir".into(), d, true, false)),
        None => r.skip(
            "cache dir",
            "--cache-dir not set: the cache lives in each VM and goes with it (a distributed cache still works)",
        ),
    }
    for v in &settings.volumes {
        dirs.push((
            format!("volume {}", v.host.display()),
            &v.host,
            !v.read_only,
            true,
        ));
    }
    for (name, dir, writable, must_exist) in dirs {
        if !dir.exists() {
            if must_exist {
                r.fail(
                    &name,
                    format!(
                        "{} does not exist: `tart run` refuses to share it",
                        dir.display()
                    ),
                    format!("`mkdir -p {}`, or remove the --volume", dir.display()),
                );
            } else {
                r.warn(
                    &name,
                    format!(
                        "{} does not exist yet; prepare will try to create it",
                        dir.display()
                    ),
                    format!("`mkdir -p {}` as the runner's user", dir.display()),
                );
            }
            continue;
        }
        if !dir.is_dir() {
            r.fail(
                &name,
                format!("{} is not a directory", dir.display()),
                "point the option at a directory",
            );
            continue;
        }
        if writable && !accessible(dir, libc::W_OK | libc::X_OK) {
            r.fail(
                &name,
                format!("{} is not writable by this user", dir.display()),
                format!(
                    "`sudo chown $(id -un) {}`, or choose another directory",
                    dir.display()
                ),
            );
            continue;
        }
        match free_bytes(dir) {
            Some((free, _)) if free < LOW_SPACE_BYTES => r.warn(
                &name,
                format!("{}: only {} free", dir.display(), gb(free)),
                "free space on that volume, or move the directory to a larger one (at least 10 GB)",
            ),
            Some((free, _)) => r.pass(&name, format!("{}: {} free", dir.display(), gb(free))),
            None => r.warn(
                &name,
                format!("{}: cannot read its free space", dir.display()),
                "check the file system by hand (`df -h`)",
            ),
        }
    }
}

fn check_tart_home(list: Option<&TartList>, r: &mut Report) {
    const NAME: &str = "tart home";
    let Some(home) = crate::tart_home::home() else {
        r.fail(
            NAME,
            "TART_HOME is not set and the user database has no home for this user",
            "set TART_HOME in the runner's environment (launchd: the plist's EnvironmentVariables)",
        );
        return;
    };
    let Some((free, on)) = free_bytes(&home) else {
        r.warn(
            NAME,
            format!("cannot read the free space of {}", home.display()),
            "check the file system by hand (`df -h`)",
        );
        return;
    };
    let exists = if home.exists() {
        String::new()
    } else {
        format!(
            " (does not exist yet; Tart creates it; measured on {})",
            on.display()
        )
    };
    let images = match list.map(|l| &l.entries) {
        Some(Ok(entries)) => Some(
            entries
                .iter()
                .filter(|e| entry_is_oci(e))
                .filter_map(|e| entry_size_gb(e).map(|s| (entry_name(e).to_string(), s)))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let Some(images) = images else {
        r.warn(
            NAME,
            format!(
                "{}{exists}: {} free; cached image sizes unknown (tart list failed)",
                home.display(),
                gb(free)
            ),
            "fix the tart check above, then run doctor again",
        );
        return;
    };
    // Each image is listed by tag and by digest: name it by its tag when sizes tie.
    let largest = images
        .iter()
        .max_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then(b.0.contains('@').cmp(&a.0.contains('@')))
        })
        .cloned();
    match largest {
        Some((name, size)) if (free as f64) < size * GB => r.warn(
            NAME,
            format!(
                "{}{exists}: {} free, less than the largest cached image ({name}, {size:.0} GB): pulling a new version of it fails with \"No space left on device\"",
                home.display(),
                gb(free)
            ),
            "remove unused images (`tart prune --entries caches --older-than 7`, or `tart delete NAME`) or free disk space",
        ),
        Some((name, size)) => r.pass(
            NAME,
            format!(
                "{}{exists}: {} free; {} cached image entries, the largest {name} ({size:.0} GB)",
                home.display(),
                gb(free),
                images.len()
            ),
        ),
        None => r.pass(
            NAME,
            format!("{}{exists}: {} free; no cached images", home.display(), gb(free)),
        ),
    }
}

/// Whether the VM's lock is free, i.e. no prepare, supervisor or `tart run` holds it.
/// Opens the lock read-only and never creates it, so doctor leaves no files behind.
fn check_vms(settings: &Settings, list: Option<&TartList>, r: &mut Report) {
    let entries = match list.map(|l| &l.entries) {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            r.fail(
                "VMs",
                e.clone(),
                "run `tart list` by hand; a broken TART_HOME or a hung Tart stops every job",
            );
            return;
        }
        None => {
            r.skip("VMs", "tart is not usable (see above)");
            return;
        }
    };
    let local: Vec<&serde_json::Value> = entries.iter().filter(|e| !entry_is_oci(e)).collect();
    let ours: Vec<VmName> = local
        .iter()
        .filter_map(|e| VmName::parse_ours(entry_name(e)))
        .collect();
    let running = local.iter().filter(|e| entry_is_running(e)).count();
    let foreign_running: Vec<&str> = local
        .iter()
        .filter(|e| entry_is_running(e) && VmName::parse_ours(entry_name(e)).is_none())
        .map(|e| entry_name(e))
        .collect();
    let detail = format!(
        "{} local VMs, {running} running; {} of this driver's",
        local.len(),
        ours.len()
    );
    if foreign_running.is_empty() {
        r.pass("VMs", detail);
    } else {
        r.warn(
            "VMs",
            format!(
                "{detail}; running VMs not started by this driver: {} (the driver's slots do not count them, but Apple's 2 macOS guests limit does)",
                foreign_running.join(", ")
            ),
            "stop them with `tart stop NAME` if this host is for CI only",
        );
    }

    // The same proof as the sweep's (`ownership`): a record here whose lock is free, or a
    // marker naming this state directory. Other VMs of this driver are left alone.
    let root = match state_dir::inspect(&settings.state_dir) {
        Ok(state_dir::Inspection::Fine { .. }) => {
            StateDir::open_ignoring_socket_limit(&settings.state_dir).ok()
        }
        _ => None,
    };
    let (mut orphans, mut foreign) = (Vec::new(), Vec::new());
    for name in &ours {
        match (
            ownership::claim(name, root.as_ref(), &settings.state_dir),
            &root,
        ) {
            (Claim::Record, Some(root)) if !VmState::new(root, name).lock_is_free() => {}
            (Claim::None, _) => foreign.push(name.to_string()),
            _ => orphans.push(name.to_string()),
        }
    }
    let vm_count = orphans.len();
    let vms = root
        .as_ref()
        .and_then(|r| r.existing_subdir(VMS).ok().flatten());
    if let (Some(root), Some(vms)) = (&root, vms) {
        for file_name in vms.entries() {
            let Some(name) = VmName::parse_ours(&file_name) else {
                continue;
            };
            if !ours.contains(&name) && VmState::new(root, &name).lock_is_free() {
                orphans.push(format!("state of {name}"));
            }
        }
    }
    let foreign = if foreign.is_empty() {
        String::new()
    } else {
        format!(
            "; left alone, as no record or marker ties them to this state directory: {}",
            foreign.join(", ")
        )
    };
    if orphans.is_empty() {
        r.pass(
            "orphaned VMs",
            format!(
                "none: every VM of this state directory belongs to a live job ({} live){foreign}",
                ours.len() - foreign.len().min(ours.len())
            ),
        );
    } else {
        let mut fix = String::from("gitlab-runner-tart-driver gc");
        if settings.state_dir.as_os_str() != state_dir::default_path().as_os_str() {
            fix.push_str(&format!(" --state-dir {}", settings.state_dir.display()));
        }
        if settings.tart_executable != "tart" {
            fix.push_str(&format!(" -x {}", settings.tart_executable));
        }
        r.warn(
            "orphaned VMs",
            {
                let states = orphans.len() - vm_count;
                let mut what = Vec::new();
                if vm_count > 0 {
                    what.push(format!(
                        "{vm_count} VM{}",
                        if vm_count == 1 { "" } else { "s" }
                    ));
                }
                if states > 0 {
                    what.push(format!(
                        "{states} leftover job state{}",
                        if states == 1 { "" } else { "s" }
                    ));
                }
                format!(
                    "{} that no live job owns: {}",
                    what.join(" and "),
                    orphans.join(", ")
                )
            },
            format!("`{fix}` (add --dry-run to see first); the next prepare also sweeps them"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// State dir, sockets, ssh, softnet, GUI session

fn check_state_dir(settings: &Settings, r: &mut Report) {
    const NAME: &str = "state dir";
    let dir = &settings.state_dir;
    // Exactly the checks every stage makes before it uses the directory.
    match state_dir::inspect(dir) {
        Ok(state_dir::Inspection::Fine { mode }) => r.pass(
            NAME,
            format!("{}, mode {mode:o}, owned by this user", dir.display()),
        ),
        Ok(state_dir::Inspection::WillBeCreated) => r.pass(
            NAME,
            format!(
                "{} does not exist yet; prepare creates it (mode 0700)",
                dir.display()
            ),
        ),
        Err(refusal) => r.fail(
            NAME,
            format!("{}; every stage refuses it", refusal.problem),
            refusal.fix,
        ),
    }
}

/// The longest control-socket path a job can produce, as ssh binds it (with its temporary
/// suffix), against `sun_path`: 104 bytes on macOS, 108 on Linux (including the NUL).
fn check_socket_path(settings: &Settings, r: &mut Report) {
    const NAME: &str = "SSH control socket path";
    let len = state_dir::longest_socket_path(&settings.state_dir);
    let max = state_dir::SOCKET_PATH_MAX;
    if len <= max {
        r.pass(
            NAME,
            format!("the longest is {len} bytes (at most {max} on this OS)"),
        );
    } else {
        r.fail(
            NAME,
            format!("the longest under {} is {len} bytes, over the {max} this OS allows: ssh cannot create it and prepare fails", settings.state_dir.display()),
            format!(
                "choose a --state-dir at least {} bytes shorter (the default {} fits)",
                len - max,
                state_dir::default_path().display()
            ),
        );
    }
}

fn check_ssh(settings: &Settings, r: &mut Report) {
    const NAME: &str = "ssh client";
    let needed = settings.transport != TransportKind::Exec;
    let fix = "install OpenSSH's client (macOS ships it at /usr/bin/ssh; Debian: `apt-get install openssh-client`) and make sure it is on gitlab-runner's PATH";
    let report_missing = |r: &mut Report, detail: String| {
        if needed {
            r.fail(NAME, detail, fix);
        } else {
            r.warn(
                NAME,
                format!("{detail} (--transport exec does not need it)"),
                fix,
            );
        }
    };
    match resolve("ssh").filter(|p| is_executable(p)) {
        None => report_missing(r, "`ssh` not found on PATH".into()),
        Some(path) => match run_bounded(&path, &["-V"], COMMAND_LIMIT) {
            Ok(out) if out.ok() => {
                let version = out.message();
                r.pass(NAME, format!("{}, {version}", path.display()));
            }
            Ok(out) => report_missing(
                r,
                format!("`{} -V` failed: {}", path.display(), out.message()),
            ),
            Err(e) => report_missing(r, e),
        },
    }
}

fn check_softnet(settings: &Settings, r: &mut Report) {
    const NAME: &str = "softnet";
    if let Some(exposure) = crate::isolation::exposure(settings) {
        let fix = "keep Softnet on (drop --no-softnet / `softnet: false`) when jobs of different trust share this Mac";
        return r.warn(NAME, exposure, fix);
    }
    if !settings.softnet {
        let found = resolve("softnet").map(|p| format!("; found at {}", p.display()));
        let found = found.unwrap_or_default();
        return r.skip(NAME, format!("one VM at a time, no neighbour to isolate from (jobs may still ask for Softnet){found}"));
    }
    let Some(path) = resolve("softnet").filter(|p| is_executable(p)) else {
        r.fail(
            NAME,
            "--softnet is set but `softnet` is not on PATH: `tart run` fails with \"softnet not found in PATH\"",
            "install Softnet (`brew install cirruslabs/cli/softnet`) and make sure it is on gitlab-runner's PATH",
        );
        return;
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o4000 != 0 => r.pass(
            NAME,
            format!("{}, setuid root", path.display()),
        ),
        Ok(_) => r.warn(
            NAME,
            format!("{} is not setuid root: Tart would ask for sudo on a terminal a CI job does not have, so VMs fail to start", path.display()),
            format!("`sudo chown root {p} && sudo chmod u+s {p}`", p = path.display()),
        ),
        Err(e) => r.warn(
            NAME,
            format!("cannot inspect {}: {e}", path.display()),
            "check its owner and mode by hand (`ls -l`)",
        ),
    }
}

fn check_gui_session(r: &mut Report) {
    const NAME: &str = "GUI session";
    if !cfg!(target_os = "macos") {
        r.skip(
            NAME,
            "not a macOS host: a logged-in GUI session and unlocked login keychain matter only on macOS 15+",
        );
        return;
    }
    let fix = "enable automatic login for the runner's user (System Settings > Users & Groups) and reboot, so that a GUI session with an unlocked login keychain exists";
    let out = run_bounded(
        Path::new("/usr/bin/stat"),
        &["-f", "%Su", "/dev/console"],
        COMMAND_LIMIT,
    );
    let user = match out {
        Ok(o) if o.ok() => o.stdout.trim().to_string(),
        Ok(o) => {
            r.warn(
                NAME,
                format!("`stat /dev/console` failed: {}", o.message()),
                fix,
            );
            return;
        }
        Err(e) => {
            r.warn(NAME, e, fix);
            return;
        }
    };
    let me = std::env::var("USER").unwrap_or_default();
    if user.is_empty() || user == "root" {
        r.warn(
            NAME,
            "nobody is logged in at the console: on macOS 15+ VMs do not start without an unlocked login keychain (\"SecKeyCreateRandomKey_ios failed\")",
            fix,
        );
    } else if !me.is_empty() && me != user {
        r.warn(
            NAME,
            format!("{user} is logged in at the console, but doctor runs as {me}: VMs need the runner user's own unlocked login keychain"),
            fix,
        );
    } else {
        r.pass(NAME, format!("{user} is logged in at the console"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thin 64-bit little-endian Mach-O with the given load commands.
    fn thin(cmds: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (cmd, payload) in cmds {
            body.extend(cmd.to_le_bytes());
            body.extend((8 + payload.len() as u32).to_le_bytes());
            body.extend(payload);
        }
        let mut out = Vec::new();
        out.extend(0xfeed_facf_u32.to_le_bytes());
        out.extend(0x0100_000c_u32.to_le_bytes()); // arm64
        out.extend(0u32.to_le_bytes());
        out.extend(2u32.to_le_bytes()); // MH_EXECUTE
        out.extend((cmds.len() as u32).to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(body);
        out
    }

    fn uuid_cmd() -> (u32, Vec<u8>) {
        (LC_UUID, (1..=16).collect())
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn thin_macho_uuid_is_found_after_other_commands() {
        let f = write(&thin(&[(0x19, vec![0; 64]), uuid_cmd()]));
        assert_eq!(
            macho_uuids(f.path()).unwrap(),
            vec![Some("01020304-0506-0708-090A-0B0C0D0E0F10".to_string())]
        );
    }

    #[test]
    fn thin_macho_without_uuid_reports_none() {
        let f = write(&thin(&[(0x19, vec![0; 64])]));
        assert_eq!(macho_uuids(f.path()).unwrap(), vec![None]);
    }

    #[test]
    fn fat_macho_reports_each_slice() {
        let a = thin(&[uuid_cmd()]);
        let b = thin(&[(0x2, vec![0; 16])]);
        let mut fat = Vec::new();
        fat.extend(0xcafe_babe_u32.to_be_bytes());
        fat.extend(2u32.to_be_bytes());
        let first = 4096u32;
        let second = first + 4096;
        for (off, len) in [(first, a.len()), (second, b.len())] {
            fat.extend(0u32.to_be_bytes());
            fat.extend(0u32.to_be_bytes());
            fat.extend(off.to_be_bytes());
            fat.extend((len as u32).to_be_bytes());
            fat.extend(12u32.to_be_bytes());
        }
        fat.resize(first as usize, 0);
        fat.extend(&a);
        fat.resize(second as usize, 0);
        fat.extend(&b);
        let f = write(&fat);
        let slices = macho_uuids(f.path()).unwrap();
        assert_eq!(slices.len(), 2);
        assert!(slices[0].is_some() && slices[1].is_none());
    }

    #[test]
    fn scripts_and_elf_files_are_not_macho() {
        let f = write(b"#!/bin/sh\necho hi\n");
        assert!(macho_uuids(f.path()).is_err());
        let f = write(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert!(macho_uuids(f.path()).is_err());
    }

    #[test]
    fn truncated_load_commands_are_an_error() {
        let mut bytes = thin(&[uuid_cmd()]);
        bytes.truncate(40);
        let f = write(&bytes);
        assert!(macho_uuids(f.path()).is_err());
    }

    #[test]
    fn image_repository_drops_tag_and_digest_but_not_port() {
        assert_eq!(
            image_repository("ghcr.io/c/macos:latest"),
            "ghcr.io/c/macos"
        );
        assert_eq!(
            image_repository("ghcr.io/c/macos@sha256:ab"),
            "ghcr.io/c/macos"
        );
        assert_eq!(image_repository("reg:5000/c/macos"), "reg:5000/c/macos");
    }

    #[test]
    fn versions_parse_from_tart_and_runner_output() {
        assert_eq!(parse_version("2.35.0"), Some((2, 35, 0)));
        assert_eq!(parse_version("v17.6.1"), Some((17, 6, 1)));
        assert_eq!(parse_version("2.26"), Some((2, 26, 0)));
        assert_eq!(parse_version("SNAPSHOT"), None);
        assert!(parse_version("2.26.9").unwrap() < (2, 27, 0));
    }

    #[test]
    fn bounded_command_is_killed_at_its_limit() {
        let started = Instant::now();
        // From PATH: the Nix build sandbox has no /bin/sleep.
        let sleep = resolve("sleep").expect("`sleep` on PATH");
        let err = run_bounded(&sleep, &["10"], Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn missing_exec_timeout_means_gitlab_default() {
        let t: Table = "prepare_exec_timeout = 0\ncleanup_exec_timeout = 90"
            .parse()
            .unwrap();
        assert_eq!(exec_timeout(&t, "prepare_exec_timeout"), 3600);
        assert_eq!(exec_timeout(&t, "cleanup_exec_timeout"), 90);
        assert_eq!(exec_timeout(&t, "config_exec_timeout"), 3600);
    }
}
