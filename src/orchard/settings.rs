//! The admin's Orchard settings: flags `--orchard-*` and the `orchard:` section of the
//! driver's YAML file (a flag wins over the file), validated into [`OrchardSettings`].
//!
//! All of them are admin-only: no job variable maps to any of them (`request.rs` has no
//! `Overridable` for them), because the controller URL, the service account and the trust
//! decide where a job's bytes go and whose VMs the driver may delete.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::trust::Trust;
use super::types::TART_VMS;
use super::url::ControllerUrl;

/// Which VMs the driver uses: this Mac's Tart VMs, or an Orchard fleet's. The admin's
/// choice (`--backend`, YAML `backend`); no job variable changes it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Tart,
    Orchard,
}

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Orchard options (admin only, never set by jobs)")]
pub struct OrchardOptions {
    /// Where jobs run: `tart` (this Mac) or `orchard` (a fleet behind an Orchard controller) [default: tart]
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<Backend>,

    /// Orchard controller URL with its API prefix if any, e.g. https://orchard.example.com:6120
    #[arg(long = "orchard-url", value_name = "URL")]
    pub url: Option<String>,

    /// Orchard service account the driver logs in as
    #[arg(long = "orchard-service-account", value_name = "NAME")]
    pub service_account: Option<String>,

    /// File holding the service account's token (read at use, never logged)
    #[arg(long = "orchard-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM file with the controller's certificate or its CA, trusted instead of the system's roots
    #[arg(
        long = "orchard-ca-file",
        value_name = "FILE",
        conflicts_with = "ca_fingerprint"
    )]
    pub ca_file: Option<PathBuf>,

    /// SHA-256 fingerprint of the controller's certificate (hex, colons allowed), trusted instead of the system's roots
    #[arg(long = "orchard-ca-fingerprint", value_name = "SHA256")]
    pub ca_fingerprint: Option<String>,

    /// Worker label a job's VM needs, KEY=VALUE (repeatable): the VM goes only to workers that have all of them
    #[arg(long = "orchard-label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Resource a job's VM takes from its worker, NAME=N (repeatable) [default: org.cirruslabs.tart-vms=1]
    #[arg(long = "orchard-resource", value_name = "NAME=N")]
    pub resources: Vec<String>,

    /// Seconds a job's VM may wait for a worker and its image before the job fails [default: 3600]
    #[arg(long = "orchard-queue-timeout", value_name = "SECONDS")]
    pub queue_timeout: Option<u64>,

    /// Seconds from `running` until SSH answers through the controller [default: --timeout]
    #[arg(long = "orchard-boot-timeout", value_name = "SECONDS")]
    pub boot_timeout: Option<u64>,

    /// A worker directory shared read-only into every VM at /Volumes/My Shared Files/NAME, NAME=PATH (repeatable; it must exist on every worker)
    #[arg(long = "orchard-host-dir", value_name = "NAME=PATH")]
    pub host_dirs: Vec<String>,

    /// First part of this runner's VM names on the controller [default: gl]
    #[arg(long = "orchard-name-prefix", value_name = "PREFIX")]
    pub name_prefix: Option<String>,

    /// Accept a plain http:// controller URL on another host (the token and every job's bytes then cross the network unencrypted): only behind a network you trust
    #[arg(long = "orchard-allow-plain-http")]
    pub allow_plain_http: bool,

    /// Seconds after which a VM of this runner that no live job holds counts as left behind and is deleted by the sweep; a job with a longer timeout is refused [default: 86400]
    #[arg(long = "orchard-max-vm-age", value_name = "SECONDS")]
    pub max_vm_age: Option<u64>,
}

/// The `orchard:` section of the driver's YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchardFile {
    url: Option<String>,
    service_account: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    ca_fingerprint: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    resources: Option<BTreeMap<String, u64>>,
    queue_timeout: Option<u64>,
    boot_timeout: Option<u64>,
    host_dirs: Option<BTreeMap<String, PathBuf>>,
    name_prefix: Option<String>,
    max_vm_age: Option<u64>,
    allow_plain_http: Option<bool>,
}

/// Where the controller is, who we are to it, whom we trust, and how jobs' VMs are placed
/// and waited for.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchardSettings {
    pub url: ControllerUrl,
    pub service_account: String,
    pub token_file: PathBuf,
    pub trust: Trust,
    pub placement: Placement,
    /// Waiting for a worker, the image pull and the clone (`pending`).
    pub queue_timeout: Duration,
    /// From `running` until SSH answers; `None` means the driver's `--timeout`.
    pub boot_timeout: Option<Duration>,
    pub name_prefix: String,
    pub max_vm_age: Duration,
    /// The admin accepted a plain http:// controller on another host.
    pub allow_plain_http: bool,
}

/// What every job's VM asks of its worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, u64>,
    /// Read-only worker directories, by share name.
    pub host_dirs: BTreeMap<String, PathBuf>,
}

impl OrchardSettings {
    /// Flags over the file. `None` when nothing of Orchard is configured; an error when it
    /// is only partly configured or a value is malformed.
    pub fn merge(o: &OrchardOptions, file: Option<OrchardFile>) -> Result<Option<OrchardSettings>> {
        let file = file.unwrap_or_default();
        let placement = Placement::merge(o, &file)?;
        let secs = |flag: Option<u64>, key: Option<u64>, name: &str| -> Result<Option<Duration>> {
            match flag.or(key) {
                Some(0) => bail!("--orchard-{name} must be at least 1 second"),
                other => Ok(other.map(Duration::from_secs)),
            }
        };
        let queue_timeout = secs(o.queue_timeout, file.queue_timeout, "queue-timeout")?
            .unwrap_or(Duration::from_secs(3600));
        let boot_timeout = secs(o.boot_timeout, file.boot_timeout, "boot-timeout")?;
        let max_vm_age = secs(o.max_vm_age, file.max_vm_age, "max-vm-age")?
            .unwrap_or(Duration::from_secs(86_400));
        let name_prefix = o
            .name_prefix
            .clone()
            .or(file.name_prefix.clone())
            .unwrap_or_else(|| "gl".into());
        super::name::RunnerTag::new(&name_prefix, "").context("--orchard-name-prefix")?;
        let url = o.url.clone().or(file.url);
        let service_account = o.service_account.clone().or(file.service_account);
        let token_file = o.token_file.clone().or(file.token_file);
        let (ca_file, ca_fingerprint) = if o.ca_file.is_some() || o.ca_fingerprint.is_some() {
            (o.ca_file.clone(), o.ca_fingerprint.clone())
        } else {
            (file.ca_file, file.ca_fingerprint)
        };
        let any = url.is_some()
            || service_account.is_some()
            || token_file.is_some()
            || ca_file.is_some()
            || ca_fingerprint.is_some();
        if !any {
            return Ok(None);
        }
        let (Some(url), Some(service_account), Some(token_file)) =
            (url, service_account, token_file)
        else {
            bail!("Orchard needs all three of --orchard-url, --orchard-service-account and --orchard-token-file (YAML: orchard: url, service_account, token_file)");
        };
        let url = ControllerUrl::parse(&url).context("--orchard-url")?;
        if service_account.is_empty() || service_account.contains(':') {
            bail!("--orchard-service-account `{service_account}`: a name without `:`");
        }
        let trust = match (ca_file, ca_fingerprint) {
            (Some(_), Some(_)) => {
                bail!("give either --orchard-ca-file or --orchard-ca-fingerprint, not both")
            }
            (Some(file), None) => Trust::CaFile(file),
            (None, Some(fp)) => Trust::fingerprint(&fp).context("--orchard-ca-fingerprint")?,
            (None, None) => Trust::SystemRoots,
        };
        if !url.tls && trust != Trust::SystemRoots {
            bail!("--orchard-url {url} is plain http: a pinned certificate needs https");
        }
        let allow_plain_http = o.allow_plain_http || file.allow_plain_http.unwrap_or(false);
        if !url.tls && !url.is_loopback() && !allow_plain_http {
            bail!("--orchard-url {url} is plain http to another host: the service account's token and every job's bytes would cross the network unencrypted; use https (the controller's default), or accept that with --orchard-allow-plain-http (YAML orchard.allow_plain_http: true)");
        }
        Ok(Some(OrchardSettings {
            url,
            service_account,
            token_file,
            trust,
            placement,
            queue_timeout,
            boot_timeout,
            name_prefix,
            max_vm_age,
            allow_plain_http,
        }))
    }
}

#[cfg(test)]
impl OrchardSettings {
    /// Settings for unit tests: this controller, this token file, defaults for the rest.
    pub fn example(url: &str, token_file: PathBuf, trust: Trust) -> OrchardSettings {
        OrchardSettings {
            url: ControllerUrl::parse(url).unwrap(),
            service_account: "gitlab".into(),
            token_file,
            trust,
            placement: Placement::default(),
            queue_timeout: Duration::from_secs(3600),
            boot_timeout: None,
            name_prefix: "gl".into(),
            max_vm_age: Duration::from_secs(86_400),
            allow_plain_http: false,
        }
    }
}

/// The Orchard settings the `orchard` backend cannot do without, or what to give.
pub fn required(settings: Option<&OrchardSettings>) -> Result<&OrchardSettings> {
    settings.context(
        "--backend orchard needs a controller: give --orchard-url, --orchard-service-account and --orchard-token-file (YAML: orchard: url, service_account, token_file)",
    )
}

impl Placement {
    /// Flags replace the file's list of the same kind (as every repeatable option does).
    fn merge(o: &OrchardOptions, file: &OrchardFile) -> Result<Placement> {
        let labels = if o.labels.is_empty() {
            file.labels.clone().unwrap_or_default()
        } else {
            pairs(&o.labels, "--orchard-label", |v| Ok(v.to_string()))?
        };
        let mut resources = if o.resources.is_empty() {
            file.resources.clone().unwrap_or_default()
        } else {
            pairs(&o.resources, "--orchard-resource", |v| {
                v.parse::<u64>()
                    .map_err(|_| anyhow::anyhow!("`{v}` is not a whole number"))
            })?
        };
        // Orchard adds it anyway for a macOS VM; saying it keeps the two-per-Mac rule visible.
        resources.entry(TART_VMS.to_string()).or_insert(1);
        let host_dirs = if o.host_dirs.is_empty() {
            file.host_dirs.clone().unwrap_or_default()
        } else {
            pairs(&o.host_dirs, "--orchard-host-dir", |v| Ok(PathBuf::from(v)))?
        };
        for key in labels.keys().chain(resources.keys()) {
            let ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !ok {
                bail!("Orchard label or resource name `{key}`: use letters, digits and . _ - /");
            }
        }
        for (name, path) in &host_dirs {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            // The controller refuses any path containing `..`, even inside a name (`a..b`).
            if !name_ok || !path.is_absolute() || path.to_string_lossy().contains("..") {
                bail!("--orchard-host-dir {name}={}: a name of letters, digits, . _ - and an absolute worker path without `..` anywhere (Orchard refuses it even inside a name)", path.display());
            }
        }
        Ok(Placement {
            labels,
            resources,
            host_dirs,
        })
    }
}

/// `KEY=VALUE` items into a map; `what` names the flag in errors.
fn pairs<T>(
    items: &[String],
    what: &str,
    value: impl Fn(&str) -> Result<T>,
) -> Result<BTreeMap<String, T>> {
    items
        .iter()
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("{what} `{item}`: expected KEY=VALUE"))?;
            let v = value(v).with_context(|| format!("{what} `{item}`"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_to_orchards_port_and_keep_the_api_prefix() {
        let u = ControllerUrl::parse("https://orchard.example.com").unwrap();
        assert_eq!((u.tls, u.port, u.prefix.as_str()), (true, 6120, ""));
        let p = ControllerUrl::parse("http://10.0.0.5:8080/orchard/v1/").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port), (false, "10.0.0.5", 8080));
        assert_eq!(p.prefix, "/orchard");
        assert_eq!(p.to_string(), "http://10.0.0.5:8080/orchard");
        let v6 = ControllerUrl::parse("https://[::1]:6121").unwrap();
        assert_eq!(v6.authority(), "[::1]:6121");
        assert_eq!(ControllerUrl::parse("https://[::1]").unwrap().port, 6120);
    }

    #[test]
    fn urls_with_credentials_or_queries_are_refused() {
        for bad in [
            "orchard:6120",
            "https://sa:token@orchard",
            "https://orchard/?token=x",
            "https://:6120",
        ] {
            assert!(ControllerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn opts(url: Option<&str>, sa: Option<&str>, token: Option<&str>) -> OrchardOptions {
        OrchardOptions {
            url: url.map(Into::into),
            service_account: sa.map(Into::into),
            token_file: token.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_configured_means_no_orchard_and_half_configured_is_an_error() {
        assert_eq!(
            OrchardSettings::merge(&OrchardOptions::default(), None).unwrap(),
            None
        );
        let err = OrchardSettings::merge(&opts(Some("https://o"), None, None), None).unwrap_err();
        assert!(err.to_string().contains("--orchard-token-file"), "{err}");
    }

    #[test]
    fn flags_win_over_the_yaml_section() {
        let file: OrchardFile = serde_saphyr::from_str(
            "url: https://from-file\nservice_account: file-sa\ntoken_file: /etc/t\n",
        )
        .unwrap();
        let s = OrchardSettings::merge(&opts(Some("https://from-flag"), None, None), Some(file))
            .unwrap()
            .unwrap();
        assert_eq!(s.url.host, "from-flag");
        assert_eq!(s.service_account, "file-sa");
        assert_eq!(s.trust, Trust::SystemRoots);
    }

    #[test]
    fn a_pin_over_plain_http_is_refused() {
        let mut o = opts(Some("http://o"), Some("sa"), Some("/t"));
        o.ca_fingerprint = Some("ab".repeat(32));
        let err = OrchardSettings::merge(&o, None).unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn plain_http_to_another_host_is_refused_unless_the_admin_accepts_it() {
        let err = OrchardSettings::merge(
            &opts(Some("http://orchard.example.com"), Some("sa"), Some("/t")),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unencrypted"), "{err}");
        assert!(err.contains("--orchard-allow-plain-http"), "{err}");
        for local in [
            "http://127.0.0.1:6120",
            "http://localhost",
            "http://[::1]:8080",
        ] {
            assert!(
                OrchardSettings::merge(&opts(Some(local), Some("sa"), Some("/t")), None).is_ok(),
                "{local}"
            );
        }
        let mut o = opts(Some("http://orchard.example.com"), Some("sa"), Some("/t"));
        o.allow_plain_http = true;
        assert!(
            OrchardSettings::merge(&o, None)
                .unwrap()
                .unwrap()
                .allow_plain_http
        );
        let file: OrchardFile = serde_saphyr::from_str(
            "url: http://10.0.0.5\nservice_account: sa\ntoken_file: /t\nallow_plain_http: true\n",
        )
        .unwrap();
        assert!(OrchardSettings::merge(&OrchardOptions::default(), Some(file)).is_ok());
    }

    #[test]
    fn the_orchard_backend_without_a_controller_is_refused_with_the_options_to_give() {
        let err = required(None).unwrap_err();
        assert!(err.to_string().contains("--orchard-url"), "{err}");
    }

    #[test]
    fn placement_defaults_to_one_macos_slot_and_reads_labels_resources_and_host_dirs() {
        let s = OrchardSettings::merge(&opts(Some("https://o"), Some("sa"), Some("/t")), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.placement.resources, [(TART_VMS.to_string(), 1)].into());
        assert_eq!(s.queue_timeout, Duration::from_secs(3600));
        assert_eq!(s.name_prefix, "gl");
        let file: OrchardFile = serde_saphyr::from_str(
            "url: https://o\nservice_account: sa\ntoken_file: /t\nlabels: {pool: ios}\nresources: {org.cirruslabs.tart-vms: 2}\nhost_dirs: {xcode: /Applications/Xcode.app}\nqueue_timeout: 60\n",
        )
        .unwrap();
        let s = OrchardSettings::merge(&OrchardOptions::default(), Some(file))
            .unwrap()
            .unwrap();
        assert_eq!(s.placement.labels["pool"], "ios");
        assert_eq!(s.placement.resources[TART_VMS], 2, "a whole Mac per job");
        assert_eq!(
            s.placement.host_dirs["xcode"],
            PathBuf::from("/Applications/Xcode.app")
        );
        assert_eq!(s.queue_timeout, Duration::from_secs(60));
    }

    #[test]
    fn malformed_placement_flags_name_the_flag_and_the_form() {
        for (labels, resources, dirs, want) in [
            (vec!["pool"], vec![], vec![], "--orchard-label"),
            (vec![], vec!["tart-vms=two"], vec![], "--orchard-resource"),
            (
                vec![],
                vec![],
                vec!["xcode=Applications/Xcode.app"],
                "--orchard-host-dir",
            ),
            (vec![], vec![], vec!["x=/a/../etc"], "--orchard-host-dir"),
            // The controller refuses `..` anywhere in a path, even inside a name.
            (
                vec![],
                vec![],
                vec!["x=/Applications/Xcode..beta.app"],
                "--orchard-host-dir",
            ),
        ] {
            let mut o = opts(Some("https://o"), Some("sa"), Some("/t"));
            o.labels = labels.into_iter().map(Into::into).collect();
            o.resources = resources.into_iter().map(Into::into).collect();
            o.host_dirs = dirs.into_iter().map(Into::into).collect();
            let err = OrchardSettings::merge(&o, None).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
    }
}
