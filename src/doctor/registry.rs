//! Doctor's check of the runner user's registry logins: a `tart login` in the keychain
//! makes the driver refuse jobs without credentials for that registry (see
//! `registry_access`), which an admin should hear about before the first job does.

use std::time::Duration;

use super::probe::{resolve, run_bounded};
use super::report::Check;
use crate::settings::Settings;

const NAME: &str = "registry logins";

pub fn check_keychain_logins(settings: &Settings) -> Check {
    if settings.registry.host_credentials {
        return Check::pass(
            NAME,
            "--host-registry-credentials: jobs without credentials may use the runner user's logins",
        );
    }
    let Some(security) = resolve("security") else {
        return Check::skip(NAME, "`security` not found: no macOS keychain to look in");
    };
    // One search per registry jobs may pull from: without `-s`, `security` shows only the
    // first login it finds, and the others would go unnamed.
    let searches: Vec<Option<String>> = match allowed_hosts(settings) {
        Some(hosts) => hosts.into_iter().map(Some).collect(),
        None => vec![None],
    };
    let mut logins = Vec::new();
    for host in &searches {
        let mut args = vec!["find-internet-password"];
        if let Some(host) = host {
            args.extend(["-s", host.as_str()]);
        }
        args.extend(["-l", "Tart Credentials"]);
        match run_bounded(&security, &args, Duration::from_secs(10)) {
            Ok(out) if out.ok() => logins.push(
                host.clone()
                    .or_else(|| server(&out.stdout))
                    .unwrap_or_else(|| "a registry".to_string()),
            ),
            // 44: no such item.
            Ok(out) if out.code == Some(44) => {}
            outcome => return Check::warn(
                NAME,
                format!(
                    "cannot search the keychain with {}: {}",
                    security.display(),
                    outcome.map_or_else(|e| e, |out| out.message())
                ),
                "run `security find-internet-password -l \"Tart Credentials\"` as the runner user",
            ),
        }
    }
    let searched = match &searches[..] {
        [None] => "any registry (no --allow-image list names the registries)".to_string(),
        hosts => hosts
            .iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    };
    if logins.is_empty() {
        return Check::pass(
            NAME,
            format!("no `tart login` in the runner user's keychain for {searched}"),
        );
    }
    let hosts = logins.join(", ");
    let logouts: Vec<String> = logins
        .iter()
        .map(|h| format!("`tart logout {h}`"))
        .collect();
    let more = if searches == [None] {
        " (repeat for every login)"
    } else {
        ""
    };
    Check::warn(
        NAME,
        format!("the runner user has a `tart login` for {hosts} in its keychain: Tart would lend it to any job, so jobs without registry credentials for {hosts} are refused (images marked --public-image excepted)"),
        format!("{} as the runner user{more}, or allow it with --host-registry-credentials", logouts.join(" and ")),
    )
}

/// The registries this runner's jobs may pull from, when the admin's settings name them:
/// the host each `--allow-image` pattern starts with, and those of the default and warm
/// images. None when jobs may use any registry (no allow list, or a pattern whose host is
/// not spelled out).
fn allowed_hosts(settings: &Settings) -> Option<Vec<String>> {
    if settings.allow_images.is_empty() {
        return None;
    }
    let mut hosts = Vec::new();
    for pattern in &settings.allow_images {
        hosts.push(literal_host(pattern.as_str())?);
    }
    let images = settings.default_image.iter().chain(&settings.warm.images);
    hosts.extend(images.filter_map(|image| Some(image.split_once('/')?.0.to_string())));
    hosts.sort();
    hosts.dedup();
    Some(hosts)
}

/// The registry host a pattern anchored at the start spells out before its first `/`
/// (`^ghcr\.io/org/.*$` gives ghcr.io), or None when that part matches more than one host.
fn literal_host(pattern: &str) -> Option<String> {
    let mut chars = pattern.strip_prefix('^')?.chars();
    let mut host = String::new();
    while let Some(c) = chars.next() {
        match c {
            '/' => break,
            '\\' => match chars.next()? {
                c @ ('.' | '-' | ':') => host.push(c),
                _ => return None,
            },
            c if c.is_ascii_alphanumeric() || c == '-' || c == ':' => host.push(c),
            _ => return None,
        }
    }
    (!host.is_empty() && pattern.contains('/')).then_some(host)
}

/// The `srvr` attribute of `security`'s listing of an item.
fn server(listing: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let value = line.trim().strip_prefix("\"srvr\"<blob>=\"")?;
        Some(value.strip_suffix('"')?.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(options: crate::settings::Options) -> Settings {
        Settings::load(&options).unwrap()
    }

    /// Each registry the allow list names is searched on its own (`-s`): one search without
    /// `-s` names only the first login it finds.
    #[test]
    fn the_registries_to_search_are_those_jobs_may_pull_from() {
        let s = settings(crate::settings::Options {
            allow_image_globs: vec!["ghcr.io/org/**".into(), "registry.local:5000/*".into()],
            allow_images: vec![r"^docker\.io/library/.*$".into()],
            default_image: Some("quay.io/team/base:1".into()),
            ..Default::default()
        });
        assert_eq!(
            allowed_hosts(&s).unwrap(),
            ["docker.io", "ghcr.io", "quay.io", "registry.local:5000"]
        );
        // No allow list, or one whose host is a pattern: any registry, one search.
        assert_eq!(allowed_hosts(&settings(Default::default())), None);
        let s = settings(crate::settings::Options {
            allow_images: vec![r"^.*\.example\.com/.*$".into()],
            ..Default::default()
        });
        assert_eq!(allowed_hosts(&s), None);
        assert_eq!(literal_host("ghcr.io/x"), None);
        assert_eq!(literal_host(r"^gh[c]r\.io/x"), None);
    }

    #[test]
    fn the_server_is_read_from_securitys_listing() {
        let listing = "keychain: \"/Users/ci/Library/Keychains/login.keychain-db\"\nclass: \"inet\"\nattributes:\n    \"acct\"<blob>=\"robot\"\n    \"srvr\"<blob>=\"ghcr.io\"\n";
        assert_eq!(server(listing).as_deref(), Some("ghcr.io"));
        assert_eq!(server("class: \"inet\"\n"), None);
    }
}
