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
//! - A cached registry image is cloned without asking its registry only when it is known to
//!   be public: the admin marked it so (`--public-image`), or its registry served that
//!   digest to a job without any credentials (a pull, or an earlier check), which
//!   [`public_images`](super::public_images) remembers by digest. So an outage or a rate
//!   limit of the registry never slows or fails a job on a public image this runner has
//!   pulled. Any other cached image (pulled with a project's credentials, or cached before
//!   this runner checked it: by the admin, a neighbour) is vetted per job: a `tart pull` by
//!   digest with the job's credentials or none, which asks the registry for the manifest
//!   and downloads nothing when cached. The check runs beside the clone ([`Vet`]); the
//!   caller starts no VM before it passes, and deletes the clone when it fails.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::failure::Failure;
use crate::host::registry_policy::Policy;
use crate::host::state_dir::StateDir;
use crate::host::tart::{Fetch, Tart};
use crate::host::tart_home;
use crate::job::image::Image;
use crate::job::public_images::PublicImages;
use crate::model::PullPolicy;

/// The outcome of [`fetch_image`]: whether it pulled, what to clone, and the registry
/// check the job still has to pass before its VM starts.
pub struct Fetched<'a> {
    pub pulled: bool,
    /// What the job's VM is cloned from (and a warm VM must have been cloned from):
    /// `<repository>@sha256:<hex>`, the digest this job was let have, whenever there is
    /// one. A tag is a link in Tart's cache that another job's pull may re-point at any
    /// moment (to a digest this job was never vetted for); a digest is not. The image's
    /// own name only for a local VM.
    pub source: String,
    pub vet: Option<Vet<'a>>,
}

/// `<repository>@<digest>` of `image`: Tart clones a cached digest by that name.
fn by_digest(image: &Image, digest: &str) -> String {
    format!("{}@{digest}", image.repository())
}

/// Makes the job's image available as its pull policy says, under the rules above. A
/// cached image this job must be vetted for comes back as [`Fetched::vet`]: the caller
/// runs it beside the clone. `tart_home` is where Tart keeps its VMs and cache.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_image<'a>(
    tart: &'a Tart,
    root: &'a StateDir,
    policy: &Policy,
    image: &'a Image,
    pull_policy: PullPolicy,
    fetch: &'a Fetch,
    limit: Duration,
    tart_home: &Path,
) -> Result<Fetched<'a>, Failure> {
    let Some(host) = &image.host else {
        let exists = tart_home::vm_exists(tart_home, &image.name);
        crate::job::image::must_pull(image, pull_policy, exists)?;
        return Ok(Fetched {
            pulled: false,
            source: image.name.clone(),
            vet: None,
        });
    };
    let digest = tart_home::cached_digest(tart_home, &image.name);
    let pulling = crate::job::image::must_pull(image, pull_policy, digest.is_some())?;
    let public = policy.is_public(&image.name);
    let credential_free = fetch.creds.is_none() && fetch.home.is_some();
    let known_public = |digest: &str| PublicImages::open(root).knows(image, digest);
    let source = |digest: Option<&str>| match digest {
        Some(digest) => by_digest(image, digest),
        None => image.name.clone(),
    };
    if !pulling && (public || digest.as_deref().is_some_and(known_public)) {
        return Ok(Fetched {
            pulled: false,
            source: source(digest.as_deref()),
            vet: None,
        });
    }
    if credential_free && !public {
        refuse_keychain_login(host).await?;
    }
    if !pulling {
        return Ok(Fetched {
            pulled: false,
            source: source(digest.as_deref()),
            vet: digest.map(|digest| Vet {
                tart,
                root,
                host,
                image,
                fetch,
                digest,
            }),
        });
    }
    crate::job::image::pull(tart, image, fetch, limit).await?;
    // What the tag points at right after this job's own pull: the registry served it this
    // job (a later re-pointing, by another job's pull, is not followed).
    let digest = tart_home::cached_digest(tart_home, &image.name);
    if credential_free {
        // The registry served it to no one in particular: any job may have it.
        if let Some(digest) = &digest {
            PublicImages::open(root).remember(image, digest);
        }
    }
    Ok(Fetched {
        pulled: true,
        source: source(digest.as_deref()),
        vet: None,
    })
}

/// The registry check a job passes before it may have a cached image that is not known to
/// be public: the registry must serve this job that digest, with the job's credentials or
/// with none.
pub struct Vet<'a> {
    tart: &'a Tart,
    root: &'a StateDir,
    host: &'a str,
    image: &'a Image,
    fetch: &'a Fetch,
    /// `sha256:<hex>` of the cached image.
    digest: String,
}

impl Vet<'_> {
    pub async fn run(self) -> Result<(), Failure> {
        let Vet {
            tart,
            root,
            host,
            image,
            fetch,
            digest,
        } = self;
        let Err(e) = tart
            .pull(&by_digest(image, &digest), fetch, Duration::from_secs(300))
            .await
        else {
            if fetch.creds.is_none() && fetch.home.is_some() {
                PublicImages::open(root).remember(image, &digest);
            }
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
