//! This host: gitlab-runner's executable, the directories jobs use and their free space,
//! the ssh client, and the GUI session Tart needs.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::disk::{free_bytes, gb};
use super::probe::{is_executable, resolve, run_bounded, COMMAND_LIMIT};
use super::report::Report;
use crate::model::TransportKind;
use crate::settings::Settings;

const LOW_SPACE_BYTES: u64 = 10_000_000_000;

/// `exe` is `--gitlab-runner`'s value, if given.
pub(super) fn check_gitlab_runner(exe: Option<&str>, r: &mut Report) -> Option<PathBuf> {
    const NAME: &str = "gitlab-runner";
    let exe = exe.unwrap_or("gitlab-runner");
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

pub(super) fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

pub(super) fn check_directories(settings: &Settings, r: &mut Report) {
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

pub(super) fn check_ssh(settings: &Settings, r: &mut Report) {
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

pub(super) fn check_gui_session(r: &mut Report) {
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
