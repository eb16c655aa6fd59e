//! Who may use which registry credentials, and which cached images.
//!
//! Tart caches every pulled image for the whole host. An image pulled with one project's
//! registry credentials (or by the admin, with the runner user's logins) would otherwise
//! serve any later job that names it, credentials or not; and Tart, given none, falls back
//! to the runner user's own logins (`~/.docker/config.json`, the login keychain). So,
//! unless the admin opts in:
//! - Tart's registry commands run with a home of their own that holds no Docker login, and
//!   without the runner's `TART_REGISTRY_*`: a job gets only the credentials it brings.
//!   The keychain cannot be hidden that way (macOS finds it through the user database, not
//!   `HOME`), so a job without credentials is refused while the runner user has a
//!   `tart login` for the image's registry.
//! - A cached registry image is cloned only after the registry has accepted the job's own
//!   credentials, or none, for that very digest (a `tart pull` by digest, which asks the
//!   registry for the manifest first and downloads nothing when cached), or when the admin
//!   marked it public (`--public-image`). Nothing is remembered between jobs: an image
//!   cached before this driver ran, or by a neighbour, is vetted the same way.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::failure::Failure;
use crate::host::tart::{Fetch, Tart};
use crate::job::image::Image;
use crate::model::PullPolicy;

use crate::host::registry_policy::Policy;

/// Makes the job's image available as its pull policy says, under the rules above; returns
/// whether it pulled.
pub async fn fetch_image(
    tart: &Tart,
    policy: &Policy,
    image: &Image,
    pull_policy: PullPolicy,
    fetch: &Fetch,
    limit: Duration,
    cached: bool,
) -> Result<bool, Failure> {
    let pulling = crate::job::image::must_pull(image, pull_policy, cached)?;
    let Some(host) = &image.host else {
        return Ok(false);
    };
    let public = policy.is_public(&image.name);
    let credential_free = fetch.creds.is_none() && fetch.home.is_some();
    if credential_free && !public && (pulling || cached) {
        refuse_keychain_login(host).await?;
    }
    if pulling {
        crate::job::image::pull(tart, image, fetch, limit).await?;
    } else if !public {
        // Cached: the registry decides, now, whether this job may have it.
        vet_cached(tart, host, image, fetch).await?;
    }
    Ok(pulling)
}

/// Before a job clones cached `image`: the registry must serve this job that digest, with
/// the job's credentials or with none.
async fn vet_cached(tart: &Tart, host: &str, image: &Image, fetch: &Fetch) -> Result<(), Failure> {
    let digest = tart.fqn(&image.name).await?;
    let Err(e) = tart.pull(&digest, fetch, Duration::from_secs(300)).await else {
        return Ok(());
    };
    let why = format!("{e:#}");
    let refused = [
        "AuthFailed",
        "code: 401",
        "code: 403",
        "DENIED",
        "UNAUTHORIZED",
    ]
    .iter()
    .any(|mark| why.contains(mark));
    match (refused, &fetch.creds) {
        (true, None) => Err(Failure::rejected(format!(
            "image `{}` is in this host's cache, but its registry serves it only with credentials, and this job has none: set TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD for {host}, or ask the admin to mark the image public (--public-image)",
            image.name
        ))),
        (true, Some(_)) => Err(Failure::rejected(format!(
            "the registry did not accept this job's credentials for `{}` ({why}): check TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD for {host}",
            image.name
        ))),
        (false, _) => Err(Failure::System(anyhow::anyhow!(
            "cannot confirm with {host} that this job may use the cached image `{}` ({why}): retry when the registry is reachable, or have the admin mark the image public (--public-image)",
            image.name
        ))),
    }
}

/// Tart falls back to the runner user's `tart login` (an Internet password in the login
/// keychain, label `Tart Credentials`) when a registry asks a job without credentials for a
/// login. macOS finds that keychain through the user database, so no environment hides it:
/// while such a login exists, a job without credentials of its own must not reach Tart's
/// registry code at all. `security` prints an item's attributes, never its secret, without
/// `-g`/`-w`.
async fn refuse_keychain_login(host: &str) -> Result<(), Failure> {
    let mut cmd = tokio::process::Command::new("security");
    cmd.args([
        "find-internet-password",
        "-s",
        host,
        "-l",
        "Tart Credentials",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    let status = match tokio::time::timeout(Duration::from_secs(10), cmd.status()).await {
        // Only macOS has the keychain (and `security`, in /usr/bin, on every Mac).
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound && !cfg!(target_os = "macos") => {
            return Ok(())
        }
        Ok(status) => status.context(
            "cannot run `security` to look for a `tart login` in the runner user's keychain",
        )?,
        Err(_) => {
            return Err(Failure::System(anyhow::anyhow!(
                "`security find-internet-password` did not answer within 10s"
            )))
        }
    };
    match status.code() {
        Some(0) => Err(Failure::System(anyhow::anyhow!(
            "the runner user has a `tart login` for {host} in its keychain, which Tart would use for this job although the job brings no registry credentials: remove it (`tart logout {host}`), or let jobs use it (--host-registry-credentials), or mark the image public (--public-image)"
        ))),
        // 44: no such item. Anything else (a locked keychain): Tart's own lookup, from the
        // same session, finds nothing either.
        _ => Ok(()),
    }
}
