//! Cached images known to be public: digests a registry served to a job that brought no
//! credentials and had none of the runner user's, remembered in the state directory
//! (`public-images/`, one file per image repository and digest). A job may clone such an
//! image from the cache without asking the registry again (see `registry_access`). A digest
//! names its content, so the verdict cannot go stale for that content; an image pulled
//! with credentials, or cached before this runner checked it, has no entry and is vetted
//! per job. A lost entry costs one registry check; nothing else reads or trusts it.

use crate::host::state_dir::StateDir;
use crate::job::image::Image;

const DIR: &str = "public-images";

/// The state directory's record of public digests. It never fails a job: a record that
/// cannot be read or written costs a registry check more.
pub struct PublicImages<'a> {
    root: &'a StateDir,
}

impl<'a> PublicImages<'a> {
    pub fn open(root: &'a StateDir) -> PublicImages<'a> {
        PublicImages { root }
    }

    /// Whether a registry served `digest` (`sha256:<hex>`) of `image`'s repository without
    /// credentials before.
    pub fn knows(&self, image: &Image, digest: &str) -> bool {
        let Ok(Some(dir)) = self.root.existing_subdir(DIR) else {
            return false;
        };
        dir.read_string(&entry(image, digest)).as_deref() == Some(key(image, digest).as_str())
    }

    /// Remembers that a registry served `digest` of `image` without credentials.
    pub fn remember(&self, image: &Image, digest: &str) {
        let written = self
            .root
            .subdir(DIR)
            .and_then(|dir| dir.write_atomic(&entry(image, digest), key(image, digest).as_bytes()));
        if let Err(e) = written {
            tracing::debug!("cannot remember a public image: {e:#}");
        }
    }
}

/// What an entry holds: the repository and digest it vouches for.
fn key(image: &Image, digest: &str) -> String {
    format!("{}@{digest}", image.repository())
}

/// An entry's file name: the SHA-256 of its key (a repository name can be longer than a
/// file name may be, and holds `/`).
fn entry(image: &Image, digest: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, key(image, digest).as_bytes());
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
