//! Cached images known to be public: digests a registry served to a job that brought no
//! credentials and had none of the runner user's, remembered in the state directory
//! (`public-images/`, one file per image repository and digest, with when it was learnt).
//! A job may clone such an image from the cache without asking the registry again (see
//! `registry_access`) for [`VERDICT_LIFETIME`] after that. A digest names its content, but
//! the verdict is about its repository, which its owner can make private at any time: so a
//! verdict expires, the next job vets the image again (one registry check, which renews a
//! verdict that still holds), and `gc` removes expired entries. An image pulled with
//! credentials, or cached before this runner checked it, has no entry and is vetted per
//! job. A lost entry costs one registry check; nothing else reads or trusts it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host::state_dir::StateDir;
use crate::job::image::Image;

const DIR: &str = "public-images";

/// How long a registry's "served without credentials" counts: a repository made private
/// reaches this runner's jobs at most this late.
pub const VERDICT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

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
    /// credentials within the last [`VERDICT_LIFETIME`].
    pub fn knows(&self, image: &Image, digest: &str) -> bool {
        self.knows_key(&key(image, digest), SystemTime::now())
    }

    fn knows_key(&self, key: &str, now: SystemTime) -> bool {
        let Ok(Some(dir)) = self.root.existing_subdir(DIR) else {
            return false;
        };
        let Some(text) = dir.read_string(&entry(key)) else {
            return false;
        };
        match text.split_once('\n') {
            Some((vouched, learnt)) if vouched == key => fresh(learnt, now),
            _ => false,
        }
    }

    /// Remembers that a registry served `digest` of `image` without credentials, now.
    pub fn remember(&self, image: &Image, digest: &str) {
        self.remember_key(&key(image, digest), SystemTime::now());
    }

    fn remember_key(&self, key: &str, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let written = self
            .root
            .subdir(DIR)
            .and_then(|dir| dir.write_atomic(&entry(key), format!("{key}\n{secs}").as_bytes()));
        if let Err(e) = written {
            tracing::debug!("cannot remember a public image: {e:#}");
        }
    }

    /// Removes the entries that no longer vouch for anything (expired, or unreadable);
    /// returns how many. For `gc`.
    pub fn prune(&self) -> usize {
        self.prune_at(SystemTime::now())
    }

    fn prune_at(&self, now: SystemTime) -> usize {
        let Ok(Some(dir)) = self.root.existing_subdir(DIR) else {
            return 0;
        };
        let mut removed = 0;
        for name in dir.entries() {
            let live = dir.read_string(&name).is_some_and(|text| {
                text.split_once('\n')
                    .is_some_and(|(vouched, learnt)| entry(vouched) == name && fresh(learnt, now))
            });
            if !live && dir.remove(&name).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Whether a verdict learnt at `learnt` (seconds since the epoch) still holds at `now`. One
/// from the future (the clock was set back since) is not trusted either.
fn fresh(learnt: &str, now: SystemTime) -> bool {
    let Ok(secs) = learnt.trim().parse::<u64>() else {
        return false;
    };
    now.duration_since(UNIX_EPOCH + Duration::from_secs(secs))
        .is_ok_and(|age| age < VERDICT_LIFETIME)
}

/// What an entry vouches for: the repository and digest.
fn key(image: &Image, digest: &str) -> String {
    format!("{}@{digest}", image.repository())
}

/// An entry's file name: the SHA-256 of its key (a repository name can be longer than a
/// file name may be, and holds `/`).
fn entry(key: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "registry.example.com/team/tools@sha256:aa";

    fn state() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateDir::open_ignoring_socket_limit(&tmp.path().join("state")).unwrap();
        (tmp, root)
    }

    #[test]
    fn a_verdict_holds_until_its_lifetime_ends() {
        let (_tmp, root) = state();
        let images = PublicImages::open(&root);
        let learnt = SystemTime::now();
        images.remember_key(KEY, learnt);
        assert!(images.knows_key(KEY, learnt + VERDICT_LIFETIME - Duration::from_secs(60)));
        assert!(!images.knows_key(KEY, learnt + VERDICT_LIFETIME));
    }

    #[test]
    fn a_verdict_from_the_future_is_not_trusted() {
        let (_tmp, root) = state();
        let images = PublicImages::open(&root);
        let now = SystemTime::now();
        images.remember_key(KEY, now + Duration::from_secs(3600));
        assert!(!images.knows_key(KEY, now));
    }

    #[test]
    fn prune_removes_expired_verdicts_and_keeps_live_ones() {
        let (_tmp, root) = state();
        let images = PublicImages::open(&root);
        let now = SystemTime::now();
        let other = "registry.example.com/team/other@sha256:bb";
        images.remember_key(KEY, now - VERDICT_LIFETIME - Duration::from_secs(1));
        images.remember_key(other, now);
        assert_eq!(images.prune_at(now), 1);
        assert!(images.knows_key(other, now));
        let dir = root.existing_subdir(DIR).unwrap().unwrap();
        assert_eq!(dir.entries(), vec![entry(other)]);
    }
}
