//! The Orchard controller's address as the admin gives it, parsed once: what the settings
//! hold and the TLS trust and the client use.

use anyhow::{bail, Context, Result};

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
    pub fn parse(url: &str) -> Result<ControllerUrl> {
        // Every message shows the URL without its userinfo: `user:TOKEN@` would reach the
        // job log.
        let shown = without_userinfo(url);
        let text = shown.as_str();
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("`{text}` is not an http:// or https:// URL");
        };
        if shown != url {
            bail!("`{text}`: no credentials in the URL (the token goes in --orchard-token-file)");
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.contains(['?', '#']) {
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

    /// Whether the controller is on this host (a loopback address or `localhost`), where
    /// plain http crosses no network.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
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

/// `url` with any `userinfo@` of its authority replaced by `…@`.
fn without_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}…{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

impl std::fmt::Display for ControllerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_credentials_is_refused_without_showing_them() {
        for url in [
            "https://gitlab:tok-SECRET@orchard.example.com:6120",
            "https://tok-SECRET@orchard.example.com/o",
            "orchard://gitlab:tok-SECRET@orchard.example.com",
            "https://gitlab:tok-SECRET@orchard.example.com:bad",
        ] {
            let e = format!("{:#}", ControllerUrl::parse(url).unwrap_err());
            assert!(!e.contains("tok-SECRET"), "{e}");
            assert!(e.contains("orchard.example.com"), "{e}");
        }
    }
}
