//! The values an admin writes, parsed and validated at the edge: volumes, displays, image
//! patterns, guest paths, CIDR ranges, disk options, time zones, shells, user names and
//! gitlab-runner versions. Each error names the value and how to fix it.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use regex::Regex;

/// A host directory shared into every VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [host, guest] => (*host, *guest, false),
            [host, guest, "ro"] => (*host, *guest, true),
            [host, guest, "rw"] => (*host, *guest, false),
            [_, _, flag] => {
                return Err(format!(
                    "volume `{spec}`: unknown flag `{flag}`, use `ro` or `rw`"
                ))
            }
            _ => return Err(format!("volume `{spec}`: expected HOST:GUEST[:ro]")),
        };
        if !host.starts_with('/') || !guest.starts_with('/') {
            return Err(format!("volume `{spec}`: both paths must be absolute"));
        }
        if guest.split('/').any(|c| c == "..") || host.split('/').any(|c| c == "..") {
            return Err(format!("volume `{spec}`: paths must not contain `..`"));
        }
        if guest
            .chars()
            .any(|c| c.is_control() || c == '\'' || c == '"' || c == '\\')
        {
            return Err(format!(
                "volume `{spec}`: guest path has quotes or control characters"
            ));
        }
        Ok(Volume {
            host: host.into(),
            guest: guest.trim_end_matches('/').to_string(),
            read_only,
        })
    }
}

/// A display resolution, `WIDTHxHEIGHT` with an optional `pt`/`px` unit as Tart takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Display(pub String);

impl FromStr for Display {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let re = Regex::new(r"^([1-9][0-9]{2,4})x([1-9][0-9]{2,4})(pt|px)?$").expect("valid regex");
        if re.is_match(s.trim()) {
            Ok(Display(s.trim().to_string()))
        } else {
            Err(format!(
                "display `{s}`: expected WIDTHxHEIGHT such as 1920x1200"
            ))
        }
    }
}

pub fn compile_all(patterns: &[String], option: &str) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).with_context(|| {
                format!("{option} `{p}` is not a valid regular expression (Rust regex syntax: no look-around or backreferences)")
            })
        })
        .collect()
}

/// gitlab-tart-executor's image globs: `*` and `?` stay within a path segment, `**` crosses
/// segments; the whole name must match.
pub fn glob_to_regex(glob: &str) -> Result<Regex> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                re.push_str(".*");
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).with_context(|| format!("`{glob}` is not a valid image glob"))
}

/// Guest paths end up in shell commands and `tart run` arguments: plain characters only.
pub fn validate_guest_path(path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.split('/').any(|c| c == "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !ok {
        bail!("guest path `{path}` must be absolute, without `..`, made of letters, digits and / . _ -");
    }
    Ok(())
}

pub fn validate_cidr(cidr: &str) -> Result<()> {
    let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
    });
    if !ok {
        bail!("`{cidr}` is not an IPv4 network such as 10.0.0.0/8");
    }
    Ok(())
}

pub fn validate_disk_opts(opts: &str) -> Result<()> {
    for opt in opts.split(',') {
        let ok = matches!(
            opt,
            "ro" | "sync=none"
                | "sync=fsync"
                | "sync=full"
                | "caching=automatic"
                | "caching=cached"
                | "caching=uncached"
        );
        if !ok {
            bail!("unknown disk option `{opt}`: use ro, sync=none|fsync|full, caching=automatic|cached|uncached");
        }
    }
    Ok(())
}

/// A time zone name as in the tz database (Europe/Berlin, UTC), or `auto`.
pub fn validate_timezone(zone: &str) -> Result<()> {
    let ok = !zone.is_empty()
        && zone.len() < 64
        && !zone.starts_with('/')
        && !zone.split('/').any(|c| c == ".." || c.is_empty())
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if !ok {
        bail!("`{zone}` is not a time zone name such as Europe/Berlin");
    }
    Ok(())
}

/// A shell is a path or a bare program name; anything else could inject commands.
pub fn validate_shell(shell: &str) -> Result<()> {
    let ok = !shell.is_empty()
        && shell.len() < 256
        && shell
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if !ok {
        bail!(
            "shell `{shell}` must be a program name or absolute path (letters, digits, / . _ - +)"
        );
    }
    Ok(())
}

pub fn validate_user(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("user name `{user}` may contain only letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

pub fn validate_runner_version(version: &str) -> Result<()> {
    let re = Regex::new(r"^(latest|v?[0-9]+\.[0-9]+\.[0-9]+)$").expect("valid regex");
    if !re.is_match(version) {
        bail!("`{version}` is not a gitlab-runner version: use `latest` or a version like 17.6.0");
    }
    Ok(())
}
