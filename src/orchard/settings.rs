//! The admin's Orchard settings: flags `--orchard-*` and the `orchard:` section of the
//! driver's YAML file (a flag wins over the file), validated into [`OrchardSettings`].
//!
//! All of them are admin-only: no job variable maps to any of them (`request.rs` has no
//! `Overridable` for them), because the controller URL, the service account and the trust
//! decide where a job's bytes go and whose VMs the driver may delete.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::trust::Trust;

/// Which VMs the driver uses: local Tart VMs, or an Orchard fleet's. Only `doctor` takes
/// it today; the stages run local Tart until the backend seam exists (docs/orchard.md).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Tart,
    Orchard,
}

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Orchard options (admin only, never set by jobs)")]
pub struct OrchardOptions {
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
}

/// Where the controller is, who we are to it, and whom we trust.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchardSettings {
    pub url: ControllerUrl,
    pub service_account: String,
    pub token_file: PathBuf,
    pub trust: Trust,
}

/// A parsed `http(s)://host[:port][/prefix]` (default port 6120, as the controller's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The API prefix without a trailing slash (`""` or `/orchard`).
    pub prefix: String,
}

impl ControllerUrl {
    pub fn parse(text: &str) -> Result<ControllerUrl> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("`{text}` is not an http:// or https:// URL");
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') || path.contains(['?', '#']) {
            bail!("`{text}`: no credentials, query or fragment in the URL (the token goes in --orchard-token-file)");
        }
        let port_of = |p: &str| {
            p.parse::<u16>()
                .with_context(|| format!("`{text}`: bad port `{p}`"))
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .with_context(|| format!("`{text}`: unclosed `[`"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, port_of(p)?),
                None if after.is_empty() => (host, 6120),
                None => bail!("`{text}`: unexpected `{after}` after the address"),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, port_of(p)?),
                None => (authority, 6120),
            }
        };
        if host.is_empty() {
            bail!("`{text}` has no host");
        }
        let prefix = path.trim_end_matches('/').trim_end_matches("/v1");
        Ok(ControllerUrl {
            tls,
            host: host.to_string(),
            port,
            prefix: prefix.to_string(),
        })
    }

    /// `host:port` for connecting (IPv6 hosts in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ControllerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

impl OrchardSettings {
    /// Flags over the file. `None` when nothing of Orchard is configured; an error when it
    /// is only partly configured or a value is malformed.
    pub fn merge(o: &OrchardOptions, file: Option<OrchardFile>) -> Result<Option<OrchardSettings>> {
        let file = file.unwrap_or_default();
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
        Ok(Some(OrchardSettings {
            url,
            service_account,
            token_file,
            trust,
        }))
    }
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
}
