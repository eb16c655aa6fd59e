//! This host: gitlab-runner's executable, the directories jobs use and their free space,
//! the ssh client, and the GUI session Tart needs.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::disk::{free_bytes, gb};
use super::probe::{is_executable, resolve, run_bounded, Located, COMMAND_LIMIT};
use super::report::Check;
use crate::model::TransportKind;
use crate::settings::Settings;

const LOW_SPACE_BYTES: u64 = 10_000_000_000;

/// `exe` is `--gitlab-runner`'s value, if given.
pub(super) fn check_gitlab_runner(exe: Option<&str>) -> Located {
    let exe = exe.unwrap_or("gitlab-runner");
    let Some(path) = resolve(exe) else {
        let detail = format!("`{exe}` not found on PATH");
        return Located::unusable(Check::fail(RUNNER, detail, RUNNER_FIX));
    };
    if !is_executable(&path) {
        let detail = format!("{} is not executable", path.display());
        return Located::unusable(Check::fail(RUNNER, detail, RUNNER_FIX));
    }
    Located {
        check: runner_version(&path),
        path: Some(path),
    }
}

const RUNNER: &str = "gitlab-runner";
const RUNNER_FIX: &str = "install gitlab-runner 17.6 or later (`brew install gitlab-runner`), or give its path with --gitlab-runner";

/// `gitlab-runner --version`'s `Version:` line.
fn runner_version(path: &Path) -> Check {
    match run_bounded(path, &["--version"], COMMAND_LIMIT) {
        Ok(out) if out.ok() => {
            let version = out
                .stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .map(|v| v.trim().to_string());
            match version {
                Some(v) => Check::pass(RUNNER, format!("{}, version {v}", path.display())),
                None => Check::warn(
                    RUNNER,
                    format!("{}: `--version` printed no `Version:` line", path.display()),
                    "check that this is GitLab Runner",
                ),
            }
        }
        Ok(out) => Check::fail(
            RUNNER,
            format!("`{} --version` failed: {}", path.display(), out.message()),
            RUNNER_FIX,
        ),
        Err(e) => Check::fail(RUNNER, e, RUNNER_FIX),
    }
}

pub(super) fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// The builds and cache directories (a skip each when not set), then every volume.
pub(super) fn check_directories(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut dirs: Vec<(String, &Path, bool, bool)> = Vec::new();
    match &settings.builds_dir {
        Some(d) => dirs.push(("builds dir".into(), d, true, false)),
        None => checks.push(Check::skip(
            "builds dir",
            "--builds-dir not set: builds stay on each VM's own disk",
        )),
    }
    match &settings.cache_dir {
        Some(d) => dirs.push(("cache dir".into(), d, true, false)),
        None => checks.push(Check::skip(
            "cache dir",
            "--cache-dir not set: the cache lives in each VM and goes with it (a distributed cache still works)",
        )),
    }
    for v in &settings.volumes {
        dirs.push((
            format!("volume {}", v.host.display()),
            &v.host,
            !v.read_only,
            true,
        ));
    }
    let each = dirs.into_iter();
    checks.extend(each.map(|(name, dir, writable, must_exist)| {
        check_directory(&name, dir, writable, must_exist)
    }));
    checks
}

/// One directory a job uses: there (or creatable), a directory, writable when jobs write
/// to it, and with room.
fn check_directory(name: &str, dir: &Path, writable: bool, must_exist: bool) -> Check {
    if !dir.exists() {
        if must_exist {
            return Check::fail(
                name,
                format!(
                    "{} does not exist: `tart run` refuses to share it",
                    dir.display()
                ),
                format!("`mkdir -p {}`, or remove the --volume", dir.display()),
            );
        }
        return Check::warn(
            name,
            format!(
                "{} does not exist yet; prepare will try to create it",
                dir.display()
            ),
            format!("`mkdir -p {}` as the runner's user", dir.display()),
        );
    }
    if !dir.is_dir() {
        return Check::fail(
            name,
            format!("{} is not a directory", dir.display()),
            "point the option at a directory",
        );
    }
    if writable && !accessible(dir, libc::W_OK | libc::X_OK) {
        return Check::fail(
            name,
            format!("{} is not writable by this user", dir.display()),
            format!(
                "`sudo chown $(id -un) {}`, or choose another directory",
                dir.display()
            ),
        );
    }
    match free_bytes(dir) {
        Some((free, _)) if free < LOW_SPACE_BYTES => Check::warn(
            name,
            format!("{}: only {} free", dir.display(), gb(free)),
            "free space on that volume, or move the directory to a larger one (at least 10 GB)",
        ),
        Some((free, _)) => Check::pass(name, format!("{}: {} free", dir.display(), gb(free))),
        None => Check::warn(
            name,
            format!("{}: cannot read its free space", dir.display()),
            "check the file system by hand (`df -h`)",
        ),
    }
}

pub(super) fn check_ssh(settings: &Settings) -> Check {
    const NAME: &str = "ssh client";
    let needed = settings.transport != TransportKind::Exec;
    let fix = "install OpenSSH's client (macOS ships it at /usr/bin/ssh; Debian: `apt-get install openssh-client`) and make sure it is on gitlab-runner's PATH";
    let missing = |detail: String| {
        if needed {
            Check::fail(NAME, detail, fix)
        } else {
            Check::warn(
                NAME,
                format!("{detail} (--transport exec does not need it)"),
                fix,
            )
        }
    };
    match resolve("ssh").filter(|p| is_executable(p)) {
        None => missing("`ssh` not found on PATH".into()),
        Some(path) => match run_bounded(&path, &["-V"], COMMAND_LIMIT) {
            Ok(out) if out.ok() => {
                let version = out.message();
                Check::pass(NAME, format!("{}, {version}", path.display()))
            }
            Ok(out) => missing(format!("`{} -V` failed: {}", path.display(), out.message())),
            Err(e) => missing(e),
        },
    }
}

pub(super) fn check_gui_session() -> Check {
    const NAME: &str = "GUI session";
    if !cfg!(target_os = "macos") {
        return Check::skip(
            NAME,
            "not a macOS host: a logged-in GUI session and unlocked login keychain matter only on macOS 15+",
        );
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
            let detail = format!("`stat /dev/console` failed: {}", o.message());
            return Check::warn(NAME, detail, fix);
        }
        Err(e) => return Check::warn(NAME, e, fix),
    };
    let me = std::env::var("USER").unwrap_or_default();
    if user.is_empty() || user == "root" {
        Check::warn(
            NAME,
            "nobody is logged in at the console: on macOS 15+ VMs do not start without an unlocked login keychain (\"SecKeyCreateRandomKey_ios failed\")",
            fix,
        )
    } else if !me.is_empty() && me != user {
        Check::warn(
            NAME,
            format!("{user} is logged in at the console, but doctor runs as {me}: VMs need the runner user's own unlocked login keychain"),
            fix,
        )
    } else {
        Check::pass(NAME, format!("{user} is logged in at the console"))
    }
}
