//! The admin's registry trust ([`Policy`]) and the credential-free home Tart's registry
//! commands get ([`CredentialFreeHome`]): what settings hold and the Tart client applies,
//! below both of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use regex::Regex;

/// The admin's registry trust settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Cached images any job may clone without credentials.
    pub public_images: Vec<Regex>,
    /// Tart may use the runner user's logins for jobs without credentials.
    pub host_credentials: bool,
}

impl Policy {
    /// Whether the admin marked `image` (`host/repository:tag` or `…@sha256:…`) public: a
    /// `--public-image` regex must match the whole name, or the whole repository before its
    /// tag or digest. Unanchored, `ghcr.io/org/base` would also make
    /// `ghcr.io/org/base-private` public.
    pub fn is_public(&self, image: &str) -> bool {
        let repository = repository_of(image);
        self.public_images.iter().any(|r| {
            Regex::new(&format!(r"\A(?:{})\z", r.as_str()))
                .is_ok_and(|whole| whole.is_match(image) || whole.is_match(repository))
        })
    }
}

/// `image` without its `@digest` or `:tag` (a `:` in the last path part only: the host's
/// port is no tag).
fn repository_of(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(colon) => &image[..last + colon],
        None => image,
    }
}

/// The environment Tart's registry commands get instead of the runner user's: a home with no
/// `~/.docker/config.json` and no keychain, and Tart's home where it was.
#[derive(Debug, Clone)]
pub struct CredentialFreeHome {
    pub home: PathBuf,
    pub tart_home: PathBuf,
}

impl CredentialFreeHome {
    /// None when the admin lets Tart use the runner user's logins.
    pub fn for_host(policy: &Policy, state_dir: &Path) -> Result<Option<CredentialFreeHome>> {
        if policy.host_credentials {
            return Ok(None);
        }
        // The swapped home below would move Tart's own default home: name it explicitly.
        let tart_home = crate::host::tart_home::home().context(
            "cannot tell where Tart keeps its VMs: TART_HOME is not set and the user database has no home for this user; set TART_HOME",
        )?;
        let home = state_dir.join("registry-home");
        crate::host::state_dir::StateDir::open(state_dir)?.subdir("registry-home")?;
        // Nothing Tart could mistake for a login may live here.
        for entry in std::fs::read_dir(&home)?.flatten() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        Ok(Some(CredentialFreeHome { home, tart_home }))
    }

    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        // Tart finds ~/.docker/config.json through Foundation's home directory, which
        // macOS takes from CFFIXED_USER_HOME before the user database. (The keychain it
        // finds through the user database alone: see `refuse_keychain_login`.)
        cmd.env("HOME", &self.home)
            .env("CFFIXED_USER_HOME", &self.home)
            .env("TART_HOME", &self.tart_home);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(patterns: &[&str]) -> Policy {
        Policy {
            public_images: patterns.iter().map(|p| Regex::new(p).unwrap()).collect(),
            host_credentials: false,
        }
    }

    #[test]
    fn a_public_image_regex_matches_the_whole_repository_not_a_longer_one() {
        let policy = public(&["ghcr.io/org/base"]);
        assert!(policy.is_public("ghcr.io/org/base:latest"));
        assert!(policy.is_public(&format!("ghcr.io/org/base@sha256:{}", "a".repeat(64))));
        assert!(!policy.is_public("ghcr.io/org/base-private:latest"));
        assert!(!policy.is_public("evil.io/ghcr.io/org/base:latest"));
    }

    #[test]
    fn a_public_image_regex_may_name_tags_and_alternatives() {
        let policy = public(&[
            "ghcr.io/org/a:1|ghcr.io/org/b",
            "registry.local:5000/pub/.*",
        ]);
        assert!(policy.is_public("ghcr.io/org/a:1"));
        assert!(!policy.is_public("ghcr.io/org/a:2"));
        assert!(policy.is_public("ghcr.io/org/b:2"));
        assert!(policy.is_public("registry.local:5000/pub/x:3"));
        assert!(!policy.is_public("registry.local:5000/private/x:3"));
    }
}
