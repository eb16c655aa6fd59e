//! The admin's configuration, merged from flags, the YAML file and defaults, validated once.
//! May use: the shared kinds (`model`) and the layers below it for their value types and
//! defaults (host: the registry policy, state dir and NAT range; guest: its builds and
//! cache dirs; orchard: the controller's options); never the command line, the job's
//! request, the warm pool's records, the backends, the stages or doctor.
//!
//! Precedence: a command-line flag wins over the `--config` file, which wins over the
//! default. Job variables are *not* read here: `job` owns them, and `job::request::Request`
//! decides what a job may change within what these settings allow.
//!
//! [`options`] holds the flags (the command line parses into them), [`file`] the YAML file,
//! [`values`] the parsing and validation of single values, [`warm`] the warm pool's options,
//! [`isolation`] whether concurrent jobs' VMs are kept apart; this file merges them into
//! [`Settings`], and hands the host the plain values it needs ([`Settings::host_limits`]).

mod file;
#[cfg(test)]
mod hostile_tests;
pub mod isolation;
pub mod options;
mod values;
pub mod warm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::model::{Overridable, PullPolicy, Resource, TransportKind};
use crate::orchard::settings::Backend;

use file::{default_config_file, read_file_settings, FileSettings};
pub use options::Options;
use options::{softnet_wanted, switch};
pub use values::*;

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
    pub registry: crate::host::registry_policy::Policy,
    pub allow_local_images: bool,
    pub guest_builds_dir: String,
    pub guest_cache_dir: String,
    /// What jobs may change through job variables.
    pub job_overrides: Vec<Overridable>,
    pub softnet_allow: Vec<String>,
    pub bridged: Option<String>,
    pub random_mac: bool,
    pub nested: bool,
    pub root_disk_opts: Option<String>,
    pub timezone: Option<String>,
    pub insecure_pull: bool,
    pub pull_concurrency: Option<u32>,
    pub auto_prune: bool,
    pub copy_gitlab_runner: bool,
    /// The Orchard controller, when one is configured (admin only).
    pub backend: Backend,
    pub orchard: Option<crate::orchard::settings::OrchardSettings>,
    /// Runners older than 14.1 write no job payload: take the job's identity from its
    /// variables, which the job itself can change. Unsafe.
    pub unsafe_job_identity_from_variables: bool,
    /// VMs kept booted ahead of jobs (admin only).
    pub warm: crate::settings::warm::WarmSettings,
}

pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

impl Settings {
    /// Merges flags over the config file over defaults, and validates the result. Errors
    /// name the option and how to fix it; they are the admin's to fix (a system failure).
    pub fn load(options: &Options) -> Result<Settings> {
        let file = match options.config.clone().or_else(default_config_file) {
            Some(path) => read_file_settings(&path)?,
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
        if macos_vm_limit > 2 {
            bail!("--macos-vm-limit {macos_vm_limit}: Apple's Virtualization framework runs at most 2 macOS guests per host");
        }
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
        let mut allow_globs = pick_vec(&o.allow_image_globs, file.allow_image_globs);
        let exclude_images = compile_all(
            &pick_vec(&o.exclude_images, file.exclude_images),
            "--exclude-image-expr",
        )?;
        let mut allow_images = compile_all(
            &pick_vec(&o.allow_images, file.allow_images),
            "--allow-image-expr",
        )?;
        for glob in allow_globs.drain(..) {
            allow_images.push(glob_to_regex(&glob).context("--allow-image")?);
        }
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
        let guest_builds_dir = o
            .guest_builds_dir
            .clone()
            .or(file.guest_builds_dir)
            .unwrap_or_else(|| crate::guest::GUEST_BUILDS_DIR.into());
        validate_guest_path(&guest_builds_dir).context("--guest-builds-dir")?;
        let guest_cache_dir = o
            .guest_cache_dir
            .clone()
            .or(file.guest_cache_dir)
            .unwrap_or_else(|| crate::guest::GUEST_CACHE_DIR.into());
        validate_guest_path(&guest_cache_dir).context("--guest-cache-dir")?;
        let job_overrides = if !o.job_overrides.is_empty() {
            o.job_overrides.clone()
        } else {
            file.job_overrides
                .unwrap_or_else(|| Overridable::DEFAULT.to_vec())
        };
        let softnet_allow = pick_vec(&o.softnet_allow, file.softnet_allow);
        for cidr in &softnet_allow {
            validate_cidr(cidr).context("--softnet-allow")?;
        }
        let bridged = o.bridged.clone().or(file.bridged);
        if let Some(interface) = &bridged {
            let ok = !interface.is_empty()
                && !interface.starts_with('-')
                && interface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " ._-".contains(c));
            if !ok {
                bail!("--bridged `{interface}` is not an interface name such as en0");
            }
        }
        let root_disk_opts = o.root_disk_opts.clone().or(file.root_disk_opts);
        if let Some(opts) = &root_disk_opts {
            validate_disk_opts(opts).context("--root-disk-opts")?;
        }
        let timezone = o.timezone.clone().or(file.timezone);
        if let Some(zone) = &timezone {
            validate_timezone(zone).context("--timezone")?;
        }
        let backend = o.orchard.backend.or(file.backend).unwrap_or_default();
        let pull_concurrency = o.pull_concurrency.or(file.pull_concurrency);
        if pull_concurrency == Some(0) {
            bail!("--pull-concurrency must be at least 1");
        }
        // Warm VMs run beside the jobs' VMs: they count for isolation as for sizing.
        let warm = crate::settings::warm::WarmSettings::merge(
            &o.warm,
            file.warm_pool,
            file.warm_images,
            file.warm_expiry,
            default_image.as_deref(),
        )?;
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
                .unwrap_or_else(crate::host::state_dir::default_path),
            concurrency,
            macos_vm_limit,
            cpu: o.cpu.or(file.cpu),
            memory: o.memory.or(file.memory),
            auto_resources: switch(
                o.auto_resources,
                o.no_auto_resources,
                file.auto_resources,
                true,
            ),
            display,
            timeout_secs,
            builds_dir: o.builds_dir.clone().or(file.builds_dir),
            cache_dir: o.cache_dir.clone().or(file.cache_dir),
            volumes,
            exclude_images,
            allow_images,
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
            allow_local_images: o.allow_local_images || file.allow_local_images.unwrap_or(false),
            guest_builds_dir,
            guest_cache_dir,
            job_overrides,
            softnet: softnet_wanted(
                o,
                file.softnet,
                // An Orchard worker runs this job's VM beside whatever other runners and
                // jobs the controller places there, whatever this runner's concurrency.
                backend == Backend::Orchard || concurrency.saturating_add(warm.pool) > 1,
                &softnet_allow,
            ),
            registry: crate::host::registry_policy::Policy {
                public_images: compile_all(
                    if o.public_images.is_empty() {
                        &file.public_images
                    } else {
                        &o.public_images
                    },
                    "--public-image",
                )?,
                host_credentials: o.host_registry_credentials || file.host_creds == Some(true),
            },
            softnet_allow,
            bridged,
            random_mac: o.random_mac || file.random_mac.unwrap_or(false),
            nested: o.nested || file.nested.unwrap_or(false),
            root_disk_opts,
            timezone,
            insecure_pull: o.insecure_pull || file.insecure_pull.unwrap_or(false),
            pull_concurrency,
            auto_prune: switch(o.auto_prune, o.no_auto_prune, file.auto_prune, true),
            copy_gitlab_runner: o.copy_gitlab_runner || file.copy_gitlab_runner.unwrap_or(false),
            backend,
            orchard: crate::orchard::settings::OrchardSettings::merge(&o.orchard, file.orchard)?,
            unsafe_job_identity_from_variables: o.unsafe_job_identity_from_variables
                || file.unsafe_job_identity_from_variables.unwrap_or(false),
            warm,
            default_image,
        })
    }

    /// What the host's slots and VM sizing need of these settings.
    pub fn host_limits(&self) -> crate::host::Limits {
        crate::host::Limits {
            concurrency: self.concurrency,
            macos_vm_limit: self.macos_vm_limit,
            warm_pool: self.warm.pool,
            cpu: self.cpu,
            memory: self.memory,
            auto_resources: self.auto_resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's tests size VMs from these defaults.
    #[test]
    fn by_default_the_host_runs_one_vm_two_macos_at_most_sized_automatically() {
        let settings = Settings::load(&Options::default()).unwrap();
        assert_eq!(
            settings.host_limits(),
            crate::host::Limits {
                concurrency: 1,
                macos_vm_limit: 2,
                warm_pool: 0,
                cpu: None,
                memory: None,
                auto_resources: true,
            }
        );
    }

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
    fn image_globs_follow_gitlab_tart_executors_rules() {
        let re = glob_to_regex("ghcr.io/cirruslabs/macos-*").unwrap();
        assert!(re.is_match("ghcr.io/cirruslabs/macos-sequoia-base:latest"));
        assert!(!re.is_match("ghcr.io/cirruslabs/macos-x/evil:latest"));
        assert!(!re.is_match("evil.io/ghcr.io/cirruslabs/macos-a"));
        assert!(glob_to_regex("ghcr.io/**")
            .unwrap()
            .is_match("ghcr.io/a/b/c:1"));
    }

    #[test]
    fn guest_paths_refuse_escapes_and_metacharacters() {
        assert!(validate_guest_path("/Users/admin/builds").is_ok());
        for bad in ["builds", "/a/../etc", "/a b", "/a;rm", "/", "/a'b"] {
            assert!(validate_guest_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_and_cidrs_are_validated() {
        assert!(validate_timezone("America/Argentina/Buenos_Aires").is_ok());
        assert!(validate_timezone("../../etc/passwd").is_err());
        assert!(validate_timezone("UTC; reboot").is_err());
        assert!(validate_cidr("10.0.0.0/8").is_ok());
        assert!(validate_cidr("10.0.0.0/33").is_err());
        assert!(validate_cidr("example.com").is_err());
    }

    #[test]
    fn duplicate_keys_in_the_config_file_are_an_error_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "concurrency: 2\nshell: bash\nconcurrency: 3\n").unwrap();
        let err = read_file_settings(&path).unwrap_err().to_string();
        assert!(
            err.contains("concurrency") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_in_the_config_file_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "concurrency: two\n").unwrap();
        let err = read_file_settings(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
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
