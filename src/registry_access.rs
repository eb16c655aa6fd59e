//! Who may use which registry credentials, and which cached images.
//!
//! Tart caches every pulled image for the whole host. An image pulled with one project's
//! registry credentials would otherwise serve any later job that names it, credentials or
//! not; and Tart, given none, falls back to the runner user's own logins
//! (`~/.docker/config.json`, the keychain). So, unless the admin opts in:
//! - Tart's registry commands run with a home of their own that holds no login, and
//!   without the runner's `TART_REGISTRY_*`: a job gets only the credentials it brings.
//! - An image this driver pulled with credentials is recorded (by name and by digest); a
//!   later job may clone it from the cache only once the registry has accepted that job's
//!   credentials for that very digest (a `tart pull` by digest, which downloads nothing when
//!   cached), or when the admin marked it public (`--public-image`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use regex::Regex;

use crate::cli::Options;
use crate::failure::Failure;
use crate::image::Image;
use crate::settings::{PullPolicy, Settings};
use crate::tart::{Fetch, Tart};

/// The admin's registry trust settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Cached images any job may clone without credentials.
    pub public_images: Vec<Regex>,
    /// Tart may use the runner user's logins for jobs without credentials.
    pub host_credentials: bool,
}

impl Policy {
    pub fn load(o: &Options, file_public: Vec<String>, file_host: Option<bool>) -> Result<Policy> {
        let public = if o.public_images.is_empty() {
            file_public
        } else {
            o.public_images.clone()
        };
        Ok(Policy {
            public_images: crate::settings::compile_all(&public, "--public-image")?,
            host_credentials: o.host_registry_credentials || file_host == Some(true),
        })
    }

    fn is_public(&self, image: &str) -> bool {
        self.public_images.iter().any(|r| r.is_match(image))
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
        let tart_home = match std::env::var_os("TART_HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home),
            None => std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".tart"))
                .context(
                    "neither TART_HOME nor HOME is set: cannot tell where Tart keeps its VMs",
                )?,
        };
        let home = state_dir.join("registry-home");
        crate::state_dir::StateDir::open(state_dir)?.subdir("registry-home")?;
        // Nothing Tart could mistake for a login may live here.
        for entry in std::fs::read_dir(&home)?.flatten() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        Ok(Some(CredentialFreeHome { home, tart_home }))
    }

    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        // Tart looks for ~/.docker/config.json through Foundation's home directory, which
        // macOS takes from CFFIXED_USER_HOME before the user database; the keychain search
        // list follows HOME. Newer Tart also reads a whole Docker config from
        // TART_DOCKER_AUTH_CONFIG: an empty one.
        cmd.env("HOME", &self.home)
            .env("CFFIXED_USER_HOME", &self.home)
            .env("TART_DOCKER_AUTH_CONFIG", "{}")
            .env("TART_HOME", &self.tart_home);
    }
}

/// Where the record of images pulled with credentials lives: one file per image name or
/// digest, so concurrent prepares never rewrite a shared file.
fn record_path(state_dir: &Path, name: &str) -> PathBuf {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    state_dir.join("private-images").join(hex)
}

/// Records `name` as pulled with credentials; called before the pull (so no job can clone
/// it from the cache in between) and with the digest name after it.
fn record_private(state_dir: &Path, name: &str) -> Result<()> {
    let path = record_path(state_dir, name);
    crate::state_dir::StateDir::open(state_dir)?.subdir("private-images")?;
    std::fs::write(&path, name).with_context(|| format!("cannot record {}", path.display()))
}

fn is_private(state_dir: &Path, name: &str) -> bool {
    record_path(state_dir, name).exists()
}

/// Makes the job's image available as its pull policy says, under the rules above; returns
/// whether it pulled.
pub async fn fetch_image(
    tart: &Tart,
    settings: &Settings,
    image: &Image,
    policy: PullPolicy,
    fetch: &Fetch,
    limit: Duration,
    cached: bool,
) -> Result<bool, Failure> {
    let state_dir = &settings.state_dir;
    let pulling = crate::image::must_pull(image, policy, cached)?;
    let with_credentials = pulling && fetch.creds.is_some() && image.host.is_some();
    if with_credentials {
        record_private(state_dir, &image.name)?;
    }
    crate::image::ensure(tart, image, policy, fetch, limit, cached).await?;
    if with_credentials {
        record_private(state_dir, &tart.fqn(&image.name).await?)?;
    } else if !pulling {
        vet_cached(tart, &settings.registry, state_dir, image, fetch).await?;
    }
    Ok(pulling)
}

/// Before a job clones `image` from the cache: an image pulled with credentials needs the
/// job's own, accepted by the registry for that digest, unless the admin marked it public.
async fn vet_cached(
    tart: &Tart,
    policy: &Policy,
    state_dir: &Path,
    image: &Image,
    fetch: &Fetch,
) -> Result<(), Failure> {
    let Some(host) = &image.host else {
        return Ok(());
    };
    if policy.is_public(&image.name) {
        return Ok(());
    }
    let digest = tart.fqn(&image.name).await?;
    if !is_private(state_dir, &image.name) && !is_private(state_dir, &digest) {
        return Ok(());
    }
    if fetch.creds.is_none() {
        return Err(Failure::rejected(format!(
            "image `{}` is in this host's cache from a pull with registry credentials, and this job has none: set TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD for {host}, or ask the admin to mark the image public (--public-image)",
            image.name
        )));
    }
    tart.pull(&digest, fetch, Duration::from_secs(300))
        .await
        .map_err(|e| {
            Failure::rejected(format!(
                "the registry did not accept this job's credentials for `{}` ({e:#}): check TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD for {host}",
                image.name
            ))
        })
}
