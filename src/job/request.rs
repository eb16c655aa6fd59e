//! What a job asks for through its variables, within what the admin allows.
//!
//! Job variables arrive from the pipeline, so each one belongs to a setting, and the admin
//! decides which settings jobs may change (`job_overrides`). Host paths, Tart's home, the
//! VM limit and the network mode are never among them. The original driver's names and
//! gitlab-tart-executor's `TART_EXECUTOR_*` names are both accepted, so pipelines move over
//! unchanged.

use std::time::Duration;

use anyhow::Context;

use crate::failure::Failure;
use crate::guest::transport::ssh::Auth;
use crate::guest::RunnerInstall;
use crate::host::tart::RegistryCredentials;
use crate::job::image::Image;
use crate::job::JobContext;
use crate::model::{Overridable, PullPolicy, TransportKind};
use crate::settings::{
    isolation, validate_shell, validate_timezone, validate_user, Display, Settings,
};

use Overridable as O;

/// Variables of the two older drivers that this one ignores on purpose, and why.
const IGNORED: &[(&str, &str)] = &[
    (
        "TART_MAX_VM_COUNT",
        "the runner's --concurrency and Apple's two-VM limit decide how many VMs run",
    ),
    ("TART_HOME", "a job cannot move Tart's home"),
    ("TART_EXECUTOR_SSH_PORT", "guests are reached on port 22"),
    (
        "TART_EXECUTOR_BRIDGED",
        "bridged networking is the admin's choice (--bridged)",
    ),
    (
        "TART_EXECUTOR_INSECURE_PULL",
        "plain-HTTP pulls are the admin's choice (--insecure-pull)",
    ),
    (
        "TART_EXECUTOR_PULL_CONCURRENCY",
        "download concurrency is the admin's choice (--pull-concurrency)",
    ),
    (
        "TART_EXECUTOR_HOST_DIR",
        "host directories are the admin's choice (--builds-dir)",
    ),
];

/// Reads job variables through the admin's policy.
struct JobVars<'a> {
    allowed: &'a [Overridable],
}

impl JobVars<'_> {
    /// The job's value for the first of `names` that is set, if jobs may change `setting`.
    fn get(
        &self,
        setting: Overridable,
        names: &[&'static str],
    ) -> Result<Option<(&'static str, String)>, Failure> {
        for &name in names {
            let Some(value) = JobContext::var(name) else {
                continue;
            };
            if !self.allowed.contains(&setting) {
                return Err(Failure::rejected(format!(
                    "the job sets {name}, but this runner does not let jobs change `{}`: remove the variable, or ask the admin to add `{}` to job_overrides",
                    setting.name(),
                    setting.name()
                )));
            }
            if value.chars().any(|c| c.is_control()) {
                return Err(Failure::rejected(format!(
                    "{name} contains control characters (a newline?)"
                )));
            }
            return Ok(Some((name, value)));
        }
        Ok(None)
    }

    fn flag(&self, setting: Overridable, names: &[&'static str]) -> Result<Option<bool>, Failure> {
        match self.get(setting, names)? {
            None => Ok(None),
            Some((name, value)) => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(Failure::rejected(format!(
                    "{name}=`{value}` is not a boolean: use true or false"
                ))),
            },
        }
    }
}

/// Everything prepare needs to know about this job's VM.
pub struct Request {
    pub image: Image,
    pub pull_policy: PullPolicy,
    pub registry: Option<RegistryCredentials>,
    pub shell: String,
    pub user: String,
    pub auth: Auth,
    pub display: Option<Display>,
    pub boot_timeout: Duration,
    pub softnet: bool,
    pub softnet_allow: Vec<String>,
    pub headless: bool,
    pub vnc: bool,
    pub transport: TransportKind,
    pub install: RunnerInstall,
    pub timezone: Option<String>,
    pub random_mac: bool,
    pub nested: bool,
    pub root_disk_opts: Option<String>,
}

/// A job's own Softnet allow list (`name` is its variable), given the NAT network's guest
/// addresses `nat`: a job may open other networks to its guest, never the one the other
/// jobs' VMs are on (that would lift their isolation from it).
fn job_softnet_allow(
    name: &str,
    cidrs: Vec<String>,
    nat: (std::net::Ipv4Addr, std::net::Ipv4Addr),
) -> Result<Vec<String>, Failure> {
    if let Some(cidr) = isolation::nat_overlap(&cidrs, nat) {
        return Err(Failure::rejected(format!(
            "{name}: `{cidr}` covers Tart's NAT network ({}-{}), where the other jobs' VMs are; a job may not open it to its guest: ask only for networks outside it",
            nat.0, nat.1
        )));
    }
    Ok(cidrs)
}

impl Request {
    pub fn resolve(settings: &Settings, job: &JobContext) -> Result<Request, Failure> {
        for (name, why) in IGNORED {
            if JobContext::var(name).is_some() {
                eprintln!("WARNING: the job sets {name}, which this driver ignores: {why}");
            }
        }
        let vars = JobVars {
            allowed: &settings.job_overrides,
        };
        let rejected = |name: &str, e: anyhow::Error| Failure::rejected(format!("{name}: {e:#}"));

        let image = Image::for_job(job, settings)?;
        let shell = match vars.get(O::Shell, &["TART_EXECUTOR_SHELL"])? {
            Some((name, shell)) => {
                validate_shell(&shell).map_err(|e| rejected(name, e))?;
                shell
            }
            None => settings.shell.clone(),
        };
        let shell_name = shell.rsplit('/').next().unwrap_or(&shell);
        if !matches!(shell_name, "bash" | "zsh") {
            eprintln!("WARNING: scripts will run in `{shell}`, but gitlab-runner generates bash scripts ($'...' quoting, pipefail): use bash or zsh");
        }
        let user = match vars.get(
            O::SshCredentials,
            &["TART_SSH_USERNAME", "TART_EXECUTOR_SSH_USERNAME"],
        )? {
            Some((name, user)) => {
                validate_user(&user).map_err(|e| rejected(name, e))?;
                user
            }
            None => settings.ssh_username.clone(),
        };
        let auth = match (
            vars.get(
                O::SshCredentials,
                &["TART_SSH_PASSWORD", "TART_EXECUTOR_SSH_PASSWORD"],
            )?,
            &settings.ssh_key_file,
            &settings.ssh_password_file,
        ) {
            (Some((_, password)), _, _) => Auth::Password(password),
            (None, Some(key), _) => Auth::Key(key.clone()),
            (None, None, Some(file)) => Auth::Password(read_secret(file)?),
            (None, None, None) => Auth::Password("admin".into()),
        };
        let display = match vars.get(O::Display, &["TART_EXECUTOR_DISPLAY"])? {
            Some((name, d)) => Some(
                d.parse::<Display>()
                    .map_err(|e| Failure::rejected(format!("{name}: {e}")))?,
            ),
            None => settings.display.clone(),
        };
        // A job may shorten the boot timeout, never lengthen it past the admin's.
        let boot_secs = match vars.get(O::Timeout, &["TART_EXECUTOR_TIMEOUT"])? {
            Some((name, t)) => t
                .parse::<u64>()
                .ok()
                .filter(|&t| t > 0)
                .ok_or_else(|| {
                    Failure::rejected(format!("{name}=`{t}` is not a positive number of seconds"))
                })?
                .min(settings.timeout_secs),
            None => settings.timeout_secs,
        };
        let transport = match vars.get(O::Transport, &["TART_TRANSPORT"])? {
            Some((name, t)) => t
                .parse()
                .map_err(|e: String| Failure::rejected(format!("{name}: {e}")))?,
            None => settings.transport,
        };
        let softnet_allow = match vars.get(O::SoftnetAllow, &["TART_EXECUTOR_SOFTNET_ALLOW"])? {
            Some((name, list)) => {
                let cidrs: Vec<String> = list
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                for cidr in &cidrs {
                    crate::settings::validate_cidr(cidr).map_err(|e| rejected(name, e))?;
                }
                job_softnet_allow(name, cidrs, crate::host::dhcp::host_nat_guest_range())?
            }
            None => {
                let nat = crate::host::dhcp::host_nat_guest_range();
                if let Some(cidr) = isolation::nat_overlap(&settings.softnet_allow, nat) {
                    eprintln!("WARNING: {}", isolation::allowed_into_nat(cidr, nat));
                }
                settings.softnet_allow.clone()
            }
        };
        let timezone = match vars.get(O::Timezone, &["TART_EXECUTOR_TIMEZONE"])? {
            Some((name, zone)) => {
                validate_timezone(&zone).map_err(|e| rejected(name, e))?;
                Some(zone)
            }
            None => settings.timezone.clone(),
        };
        let timezone = match timezone.as_deref() {
            Some("auto") => host_timezone(),
            _ => timezone,
        };
        let root_disk_opts = match vars.get(O::RootDiskOpts, &["TART_EXECUTOR_ROOT_DISK_OPTS"])? {
            Some((name, opts)) => {
                crate::settings::validate_disk_opts(&opts).map_err(|e| rejected(name, e))?;
                Some(opts)
            }
            None => settings.root_disk_opts.clone(),
        };
        Ok(Request {
            pull_policy: pull_policy(&vars, settings)?,
            registry: registry_credentials(&vars, &image)?,
            image,
            shell,
            user,
            auth,
            display,
            boot_timeout: Duration::from_secs(boot_secs),
            // A job may add isolation, never remove the admin's.
            softnet: settings.softnet
                || !softnet_allow.is_empty()
                || vars
                    .flag(
                        O::Softnet,
                        &["TART_EXECUTOR_SOFTNET_ENABLED", "TART_EXECUTOR_SOFTNET"],
                    )?
                    .unwrap_or(false),
            softnet_allow,
            headless: vars
                .flag(O::Headless, &["TART_EXECUTOR_HEADLESS"])?
                .unwrap_or(true),
            vnc: vars
                .flag(O::Vnc, &["TART_EXECUTOR_VNC_ENABLED"])?
                .unwrap_or(false),
            transport,
            install: RunnerInstall {
                wanted: settings.install_gitlab_runner || install_flag(&vars)?,
                force: settings.force_install_gitlab_runner,
                version: settings.gitlab_runner_version.clone(),
                copy_from_host: settings.copy_gitlab_runner,
            },
            timezone,
            random_mac: settings.random_mac
                || vars
                    .flag(O::RandomMac, &["TART_EXECUTOR_RANDOM_MAC"])?
                    .unwrap_or(false),
            nested: settings.nested
                || vars
                    .flag(O::Nested, &["TART_EXECUTOR_NESTED"])?
                    .unwrap_or(false),
            root_disk_opts,
        })
    }

    /// The arguments of `tart run` after the VM name, for a guest of `guest_os` (Tart's
    /// `darwin`/`linux`).
    pub fn run_args(&self, settings: &Settings, guest_os: &str) -> Vec<String> {
        let mut args = Vec::new();
        if self.headless {
            args.push("--no-graphics".to_string());
        }
        if self.vnc {
            args.push("--vnc".into());
        }
        if let Some(interface) = &settings.bridged {
            args.extend(["--net-bridged".to_string(), interface.clone()]);
        } else if !self.softnet_allow.is_empty() {
            args.extend([
                "--net-softnet-allow".to_string(),
                self.softnet_allow.join(","),
            ]);
        } else if self.softnet {
            args.push("--net-softnet".into());
        }
        // Tart refuses to start a macOS guest with --nested.
        if self.nested && guest_os == "linux" {
            args.push("--nested".into());
        }
        if let Some(opts) = &self.root_disk_opts {
            args.extend(["--root-disk-opts".to_string(), opts.clone()]);
        }
        args
    }

    /// Environment of the job's scripts in the guest, set after the login profile.
    pub fn guest_env(&self) -> Vec<(String, String)> {
        self.timezone
            .iter()
            .map(|zone| ("TZ".to_string(), zone.clone()))
            .collect()
    }
}

/// gitlab-tart-executor takes `brew`, `curl` or a version here; the original took a boolean.
fn install_flag(vars: &JobVars) -> Result<bool, Failure> {
    match vars.get(
        O::InstallGitlabRunner,
        &["TART_EXECUTOR_INSTALL_GITLAB_RUNNER"],
    )? {
        None => Ok(false),
        Some((_, v))
            if matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "0" | "no" | "off"
            ) =>
        {
            Ok(false)
        }
        Some(_) => Ok(true),
    }
}

/// The pull policy: the job's TART_PULL_POLICY (or gitlab-tart-executor's ALWAYS_PULL), if
/// the admin allows that policy.
fn pull_policy(vars: &JobVars, settings: &Settings) -> Result<PullPolicy, Failure> {
    let requested = match vars.get(O::PullPolicy, &["TART_PULL_POLICY"])? {
        Some((name, value)) => value
            .parse::<PullPolicy>()
            .map_err(|e| Failure::rejected(format!("{name}: {e}")))?,
        None => match vars.flag(O::PullPolicy, &["TART_EXECUTOR_ALWAYS_PULL"])? {
            Some(true) => PullPolicy::Always,
            Some(false) => PullPolicy::IfNotPresent,
            None => return Ok(settings.pull_policy),
        },
    };
    if !settings.allowed_pull_policies.contains(&requested) {
        return Err(Failure::rejected(format!(
            "TART_PULL_POLICY={requested} is not allowed on this runner (allowed: {})",
            settings
                .allowed_pull_policies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(requested)
}

/// Credentials for the image's registry: the job's TART_REGISTRY_* when they name this host
/// (or name no host), else GitLab's own registry credentials when the image lives there.
fn registry_credentials(
    vars: &JobVars,
    image: &Image,
) -> Result<Option<RegistryCredentials>, Failure> {
    let Some(host) = image.host.clone() else {
        return Ok(None);
    };
    let names = [
        "TART_REGISTRY_USERNAME",
        "TART_REGISTRY_PASSWORD",
        "TART_REGISTRY",
        "TART_REGISTRY_HOSTNAME",
    ];
    let get = |name: &'static str| {
        vars.get(O::RegistryCredentials, &[name])
            .map(|v| v.map(|(_, v)| v))
    };
    let custom_host = match get(names[2])? {
        Some(h) => Some(h),
        None => get(names[3])?,
    };
    if let (Some(username), Some(password)) = (get(names[0])?, get(names[1])?) {
        if custom_host.as_deref().is_none_or(|h| h == host) {
            return Ok(Some(RegistryCredentials {
                host,
                username,
                password,
            }));
        }
    }
    // GitLab's own registry: the runner's CI_* variables, not a job override.
    if JobContext::var("CI_REGISTRY").as_deref() == Some(host.as_str()) {
        if let (Some(username), Some(password)) = (
            JobContext::var("CI_REGISTRY_USER"),
            JobContext::var("CI_REGISTRY_PASSWORD"),
        ) {
            return Ok(Some(RegistryCredentials {
                host,
                username,
                password,
            }));
        }
    }
    Ok(None)
}

fn read_secret(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the SSH password file {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The host's time zone name, from the /etc/localtime link (macOS and Linux alike).
fn host_timezone() -> Option<String> {
    let target = std::fs::read_link("/etc/localtime").ok()?;
    let text = target.to_string_lossy();
    let zone = text.split("zoneinfo/").nth(1)?.to_string();
    validate_timezone(&zone).ok().map(|_| zone)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const NAT: (Ipv4Addr, Ipv4Addr) = (
        Ipv4Addr::new(192, 168, 64, 2),
        Ipv4Addr::new(192, 168, 64, 254),
    );

    #[test]
    fn a_job_cannot_open_the_nat_network_to_its_guest() {
        for cidr in ["0.0.0.0/0", "192.168.64.0/24", "192.168.64.9/32"] {
            let refused = job_softnet_allow(
                "TART_EXECUTOR_SOFTNET_ALLOW",
                vec!["10.0.0.0/8".into(), cidr.into()],
                NAT,
            );
            let Err(Failure::Rejected(why)) = refused else {
                panic!("{cidr} was not a build failure: {refused:?}");
            };
            let why = why.to_string();
            assert!(
                why.starts_with("TART_EXECUTOR_SOFTNET_ALLOW: ") && why.contains(cidr),
                "{why}"
            );
        }
    }

    #[test]
    fn a_job_may_open_networks_beside_the_nat_network() {
        let cidrs = vec!["10.0.0.0/8".to_string(), "192.168.65.0/24".to_string()];
        let allowed = job_softnet_allow("TART_EXECUTOR_SOFTNET_ALLOW", cidrs.clone(), NAT);
        assert_eq!(allowed.ok(), Some(cidrs));
    }
}
