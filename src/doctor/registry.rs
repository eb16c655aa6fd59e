//! Doctor's check of the runner user's registry logins: a `tart login` in the keychain
//! makes the driver refuse jobs without credentials for that registry (see
//! `registry_access`), which an admin should hear about before the first job does.

use std::time::Duration;

use super::probe::{resolve, run_bounded};
use super::report::Report;
use crate::settings::Settings;

const NAME: &str = "registry logins";

pub fn check_keychain_logins(settings: &Settings, r: &mut Report) {
    if settings.registry.host_credentials {
        r.pass(
            NAME,
            "--host-registry-credentials: jobs without credentials may use the runner user's logins",
        );
        return;
    }
    let Some(security) = resolve("security") else {
        r.skip(NAME, "`security` not found: no macOS keychain to look in");
        return;
    };
    let args = ["find-internet-password", "-l", "Tart Credentials"];
    match run_bounded(&security, &args, Duration::from_secs(10)) {
        Ok(out) if out.ok() => {
            let host = server(&out.stdout).unwrap_or_else(|| "a registry".to_string());
            r.warn(
                NAME,
                format!("the runner user has a `tart login` for {host} in its keychain: Tart would lend it to any job, so jobs without registry credentials for {host} are refused (images marked --public-image excepted)"),
                format!("`tart logout {host}` as the runner user (repeat for every login), or allow it with --host-registry-credentials"),
            );
        }
        // 44: no such item.
        Ok(out) if out.code == Some(44) => {
            r.pass(NAME, "no `tart login` in the runner user's keychain")
        }
        outcome => r.warn(
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

    #[test]
    fn the_server_is_read_from_securitys_listing() {
        let listing = "keychain: \"/Users/ci/Library/Keychains/login.keychain-db\"\nclass: \"inet\"\nattributes:\n    \"acct\"<blob>=\"robot\"\n    \"srvr\"<blob>=\"ghcr.io\"\n";
        assert_eq!(server(listing).as_deref(), Some("ghcr.io"));
        assert_eq!(server("class: \"inet\"\n"), None);
    }
}
