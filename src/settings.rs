//! The admin's configuration, merged from flags, the YAML file and defaults, validated once.
//!
//! Precedence: a command-line flag wins over the `--config` file, which wins over the
//! default. Job variables are *not* read here: `job.rs` owns them, and `JobRequest` decides
//! what a job may change within what these settings allow.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;

use crate::cli::Options;

/// How many CPUs or how much memory a VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Auto,
    Fixed(u64),
}

impl FromStr for Resource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Resource::Auto),
            n => match n.parse::<u64>() {
                Ok(0) => Err("must be at least 1, or `auto`".into()),
                Ok(v) => Ok(Resource::Fixed(v)),
                Err(_) => Err(format!("`{n}` is not a number or `auto`")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Resource::from_str(&n.to_string()),
            Raw::Text(t) => Resource::from_str(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "always" => Ok(PullPolicy::Always),
            "if-not-present" | "if_not_present" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy `{other}`: use always, if-not-present or never"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Ssh,
    Exec,
    Auto,
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "ssh" => Ok(TransportKind::Ssh),
            "exec" => Ok(TransportKind::Exec),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport `{other}`: use ssh, exec or auto"
            )),
        }
    }
}

/// The `--config` file. Same names as the long flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    tart_executable: Option<String>,
    state_dir: Option<PathBuf>,
    concurrency: Option<u32>,
    macos_vm_limit: Option<u32>,
    cpu: Option<Resource>,
    memory: Option<Resource>,
    auto_resources: Option<bool>,
    display: Option<String>,
    timeout: Option<u64>,
    builds_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    exclude_images: Vec<String>,
    #[serde(default)]
    allow_images: Vec<String>,
    default_image: Option<String>,
    pull_policy: Option<PullPolicy>,
    #[serde(default)]
    allowed_pull_policies: Vec<PullPolicy>,
    transport: Option<TransportKind>,
    shell: Option<String>,
    ssh_username: Option<String>,
    ssh_password_file: Option<PathBuf>,
    ssh_key_file: Option<PathBuf>,
    install_gitlab_runner: Option<bool>,
    force_install_gitlab_runner: Option<bool>,
    gitlab_runner_version: Option<String>,
    softnet: Option<bool>,
    allow_local_images: Option<bool>,
}

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

/// The validated admin settings every stage works from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tart_executable: String,
    pub state_dir: PathBuf,
    pub concurrency: u32,
    pub macos_vm_limit: u32,
    pub cpu: Option<Resource>,
    pub memory: Option<Resource>,
    pub auto_resources: bool,
    pub display: Option<Display>,
    pub timeout_secs: u64,
    pub builds_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    pub exclude_images: Vec<Regex>,
    pub allow_images: Vec<Regex>,
    pub default_image: Option<String>,
    pub pull_policy: PullPolicy,
    pub allowed_pull_policies: Vec<PullPolicy>,
    pub transport: TransportKind,
    pub shell: String,
    pub ssh_username: String,
    pub ssh_password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub install_gitlab_runner: bool,
    pub force_install_gitlab_runner: bool,
    pub gitlab_runner_version: String,
    pub softnet: bool,
    pub allow_local_images: bool,
}

pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

impl Settings {
    /// Merges flags over the config file over defaults, and validates the result. Errors
    /// name the option and how to fix it; they are the admin's to fix (a system failure).
    pub fn load(options: &Options) -> Result<Settings> {
        let file = match &options.config {
            Some(path) => read_file_settings(path)?,
            None => FileSettings::default(),
        };
        let o = options;
        let pick_vec =
            |cli: &Vec<String>, file: Vec<String>| if cli.is_empty() { file } else { cli.clone() };

        let concurrency = o.concurrency.or(file.concurrency).unwrap_or(1);
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let macos_vm_limit = o.macos_vm_limit.or(file.macos_vm_limit).unwrap_or(2);
        if macos_vm_limit == 0 {
            bail!("--macos-vm-limit must be at least 1 (Apple allows 2 macOS guests per host)");
        }
        let display = match o.display.clone().or(file.display) {
            Some(d) => Some(
                d.parse::<Display>()
                    .map_err(anyhow::Error::msg)
                    .context("--display")?,
            ),
            None => None,
        };
        let volumes = pick_vec(&o.volumes, file.volumes)
            .iter()
            .map(|v| v.parse::<Volume>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()
            .context("--volume")?;
        let exclude_images = compile_all(
            &pick_vec(&o.exclude_images, file.exclude_images),
            "--exclude-image-expr",
        )?;
        let allow_images = compile_all(
            &pick_vec(&o.allow_images, file.allow_images),
            "--allow-image-expr",
        )?;
        let allowed_pull_policies = if !o.allowed_pull_policies.is_empty() {
            o.allowed_pull_policies.clone()
        } else if !file.allowed_pull_policies.is_empty() {
            file.allowed_pull_policies
        } else {
            vec![
                PullPolicy::Always,
                PullPolicy::IfNotPresent,
                PullPolicy::Never,
            ]
        };
        let pull_policy = o
            .pull_policy
            .or(file.pull_policy)
            .unwrap_or(PullPolicy::IfNotPresent);
        let shell = o
            .shell
            .clone()
            .or(file.shell)
            .unwrap_or_else(|| "bash".into());
        validate_shell(&shell).context("--shell")?;
        let ssh_username = o
            .ssh_username
            .clone()
            .or(file.ssh_username)
            .unwrap_or_else(|| "admin".into());
        validate_user(&ssh_username).context("--ssh-username")?;
        let gitlab_runner_version = o
            .gitlab_runner_version
            .clone()
            .or(file.gitlab_runner_version)
            .unwrap_or_else(|| "latest".into());
        validate_runner_version(&gitlab_runner_version).context("--gitlab-runner-version")?;
        let timeout_secs = o.timeout.or(file.timeout).unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 {
            bail!("--timeout must be at least 1 second");
        }
        let auto_resources = if o.no_auto_resources {
            false
        } else if o.auto_resources {
            true
        } else {
            file.auto_resources.unwrap_or(true)
        };
        let default_image = o.default_image.clone().or(file.default_image);
        for dir in [
            &o.builds_dir,
            &file.builds_dir,
            &o.cache_dir,
            &file.cache_dir,
        ]
        .into_iter()
        .flatten()
        {
            if !dir.is_absolute() {
                bail!(
                    "host directory `{}` must be an absolute path",
                    dir.display()
                );
            }
        }
        Ok(Settings {
            tart_executable: o
                .tart_executable
                .clone()
                .or(file.tart_executable)
                .unwrap_or_else(|| "tart".into()),
            state_dir: o
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            concurrency,
            macos_vm_limit,
            cpu: o.cpu.or(file.cpu),
            memory: o.memory.or(file.memory),
            auto_resources,
            display,
            timeout_secs,
            builds_dir: o.builds_dir.clone().or(file.builds_dir),
            cache_dir: o.cache_dir.clone().or(file.cache_dir),
            volumes,
            exclude_images,
            allow_images,
            default_image,
            pull_policy,
            allowed_pull_policies,
            transport: o.transport.or(file.transport).unwrap_or(TransportKind::Ssh),
            shell,
            ssh_username,
            ssh_password_file: o.ssh_password_file.clone().or(file.ssh_password_file),
            ssh_key_file: o.ssh_key_file.clone().or(file.ssh_key_file),
            install_gitlab_runner: o.install_gitlab_runner
                || file.install_gitlab_runner.unwrap_or(false),
            force_install_gitlab_runner: o.force_install_gitlab_runner
                || file.force_install_gitlab_runner.unwrap_or(false),
            gitlab_runner_version,
            softnet: o.softnet || file.softnet.unwrap_or(false),
            allow_local_images: o.allow_local_images || file.allow_local_images.unwrap_or(false),
        })
    }
}

fn read_file_settings(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the driver config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileSettings::default());
    }
    serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("driver config file {} is invalid: {e}", path.display()))
}

/// `/tmp/tartdrv-<uid>`: short, because SSH control sockets live under it and macOS
/// allows only 104 bytes for a socket path.
fn default_state_dir() -> PathBuf {
    // SAFETY: getuid never fails.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/tartdrv-{uid}"))
}

fn compile_all(patterns: &[String], option: &str) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).with_context(|| {
                format!("{option} `{p}` is not a valid regular expression (Rust regex syntax: no look-around or backreferences)")
            })
        })
        .collect()
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

fn validate_runner_version(version: &str) -> Result<()> {
    let re = Regex::new(r"^(latest|v?[0-9]+\.[0-9]+\.[0-9]+)$").expect("valid regex");
    if !re.is_match(version) {
        bail!("`{version}` is not a gitlab-runner version: use `latest` or a version like 17.6.0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_with_ro_flag_is_read_only() {
        let v: Volume = "/data/models:/opt/models:ro".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                host: "/data/models".into(),
                guest: "/opt/models".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn volume_with_unknown_flag_names_the_flag() {
        let err = "/a:/b:rx".parse::<Volume>().unwrap_err();
        assert!(err.contains("unknown flag `rx`"), "{err}");
    }

    #[test]
    fn volume_with_dot_dot_is_refused() {
        assert!("/a/../etc:/b".parse::<Volume>().is_err());
        assert!("/a:/b/../../etc".parse::<Volume>().is_err());
    }

    #[test]
    fn relative_volume_paths_are_refused() {
        assert!("a:/b".parse::<Volume>().is_err());
        assert!("/a:b".parse::<Volume>().is_err());
    }

    #[test]
    fn display_accepts_units_and_rejects_garbage() {
        assert!("1920x1200".parse::<Display>().is_ok());
        assert!("1200x800pt".parse::<Display>().is_ok());
        assert!("1920x".parse::<Display>().is_err());
        assert!("1920x1200;rm".parse::<Display>().is_err());
    }

    #[test]
    fn resource_parses_auto_and_numbers() {
        assert_eq!("auto".parse::<Resource>(), Ok(Resource::Auto));
        assert_eq!("4".parse::<Resource>(), Ok(Resource::Fixed(4)));
        assert!("0".parse::<Resource>().is_err());
        assert!("four".parse::<Resource>().is_err());
    }

    #[test]
    fn shell_with_metacharacters_is_refused() {
        assert!(validate_shell("/bin/zsh").is_ok());
        assert!(validate_shell("bash; rm -rf /").is_err());
        assert!(validate_shell("").is_err());
    }

    #[test]
    fn config_file_with_unknown_key_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "concurrency: 2\npul_policy: always\n").unwrap();
        let err = read_file_settings(&path).unwrap_err().to_string();
        assert!(err.contains("pul_policy"), "{err}");
    }

    #[test]
    fn flag_wins_over_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "concurrency: 2\npull_policy: never\ncpu: auto\n").unwrap();
        let options = Options {
            config: Some(path),
            concurrency: Some(3),
            ..Default::default()
        };
        let s = Settings::load(&options).unwrap();
        assert_eq!(s.concurrency, 3);
        assert_eq!(s.pull_policy, PullPolicy::Never);
        assert_eq!(s.cpu, Some(Resource::Auto));
    }

    #[test]
    fn invalid_exclude_expression_is_a_clear_error() {
        let options = Options {
            exclude_images: vec!["(?<=x)y".into()],
            ..Default::default()
        };
        let err = format!("{:#}", Settings::load(&options).unwrap_err());
        assert!(err.contains("--exclude-image-expr"), "{err}");
    }
}
