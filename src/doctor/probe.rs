//! Bounded commands: finding executables on PATH and running them with a time limit, so a
//! sick host cannot make doctor hang.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::report::Check;

/// Each external command gets this long; doctor must answer quickly even on a sick host.
pub(super) const COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// Finds `exe` as the OS would: a path if it has a slash, else the first match on PATH.
/// A match that is not executable is returned when nothing better exists, so the caller
/// can say so.
pub(super) fn resolve(exe: &str) -> Option<PathBuf> {
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

/// A check of an executable, and the executable when the checks after it can run it.
pub(super) struct Located {
    pub(super) check: Check,
    pub(super) path: Option<PathBuf>,
}

impl Located {
    /// The check found nothing the later checks could run.
    pub(super) fn unusable(check: Check) -> Located {
        Located { check, path: None }
    }
}

pub(super) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

pub(super) struct Output {
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Output {
    pub(super) fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// The error line of stderr (past Tart's housekeeping warning), else of stdout.
    pub(super) fn message(&self) -> String {
        match crate::host::tart_message::error_line(&self.stderr) {
            line if line.is_empty() => crate::host::tart_message::error_line(&self.stdout),
            line => line,
        }
    }
}

/// Runs a command to completion within `limit`; kills it when it takes longer.
pub(super) fn run_bounded(exe: &Path, args: &[&str], limit: Duration) -> Result<Output, String> {
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
pub(super) fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
