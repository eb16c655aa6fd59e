//! Names of this driver's Orchard VMs: `<prefix>-<runner-hash>-<job-id>-<attempt>`.
//!
//! Orchard names are cluster-wide, so the runner's identity is in the name: two runners (or
//! two GitLab instances) sharing one controller never collide, and the sweep can tell this
//! runner's VMs from everyone else's. The form is the strict one the Orchard CLI announces
//! (spec/orchard.md §1.5): lowercase `[a-z0-9-]`, alphanumeric at both ends, at most 63
//! characters, which the construction guarantees for any job id and attempt.

use std::fmt;

use anyhow::{bail, Result};

/// At most 20 characters, so the longest name (20 + 1 + 8 + 1 + 20 + 1 + 10) fits in 63.
const MAX_PREFIX: usize = 20;
const HASH_CHARS: usize = 8;
pub const MAX_NAME: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmName(String);

/// The part of every name that identifies this runner (see `super::identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerTag {
    prefix: String,
    hash: String,
}

impl RunnerTag {
    /// `prefix` is the admin's (validated here); `identity` is what makes this runner
    /// unique (e.g. the GitLab URL and the runner's token id), hashed so nothing of it leaks.
    pub fn new(prefix: &str, identity: &str) -> Result<RunnerTag> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && !prefix.ends_with('-')
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            bail!(
                "Orchard VM name prefix `{prefix}`: use 1 to {MAX_PREFIX} lowercase letters, digits or dashes, starting with a letter"
            );
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
        let hash: String = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..HASH_CHARS]
            .to_string();
        Ok(RunnerTag {
            prefix: prefix.to_string(),
            hash,
        })
    }

    /// The tag whose hash part is `hash`, as [`RunnerTag::hash`] gave it; `None` for
    /// anything else (a stray file in the state directory's list).
    pub fn known(prefix: &str, hash: &str) -> Option<RunnerTag> {
        let ok = hash.len() == HASH_CHARS
            && hash
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        let tag = RunnerTag::new(prefix, "").ok()?;
        ok.then(|| RunnerTag {
            hash: hash.to_string(),
            ..tag
        })
    }

    /// The hashed identity, the part of the name after the prefix.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn vm_name(&self, job_id: u64, attempt: u32) -> VmName {
        let name = VmName(format!("{}-{}-{job_id}-{attempt}", self.prefix, self.hash));
        debug_assert!(name.as_str().len() <= MAX_NAME, "{name}");
        name
    }

    /// The job id and attempt of one of this runner's VM names; `None` for anyone else's.
    pub fn parse(&self, name: &str) -> Option<(u64, u32)> {
        let rest = name
            .strip_prefix(&self.prefix)?
            .strip_prefix('-')?
            .strip_prefix(&self.hash)?
            .strip_prefix('-')?;
        let (job, attempt) = rest.split_once('-')?;
        Some((job.parse().ok()?, attempt.parse().ok()?))
    }
}

impl VmName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(name: &str) -> bool {
        name.len() <= MAX_NAME
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn names_carry_prefix_runner_hash_job_and_attempt() {
        let tag = RunnerTag::new("gl", "https://gitlab.example.com runner 42").unwrap();
        let name = tag.vm_name(88412345, 1);
        let parts: Vec<&str> = name.as_str().split('-').collect();
        assert_eq!(parts[0], "gl");
        assert_eq!(parts[1].len(), 8);
        assert_eq!(&parts[2..], ["88412345", "1"]);
        assert!(strict(name.as_str()));
    }

    #[test]
    fn the_longest_possible_name_still_fits_orchards_63_characters() {
        let tag = RunnerTag::new("abcdefghij0123456789", "x").unwrap();
        let name = tag.vm_name(u64::MAX, u32::MAX);
        assert!(
            strict(name.as_str()),
            "{name} ({} chars)",
            name.as_str().len()
        );
    }

    #[test]
    fn two_runners_never_share_names_and_each_recognises_only_its_own() {
        let a = RunnerTag::new("gl", "runner a").unwrap();
        let b = RunnerTag::new("gl", "runner b").unwrap();
        assert_ne!(a.vm_name(7, 1), b.vm_name(7, 1));
        assert_eq!(a.parse(a.vm_name(7, 3).as_str()), Some((7, 3)));
        assert_eq!(b.parse(a.vm_name(7, 3).as_str()), None);
        assert_eq!(a.parse("gl-something-else"), None);
    }

    #[test]
    fn a_tag_rebuilt_from_its_hash_recognises_the_same_names() {
        let tag = RunnerTag::new("gl", "id runner").unwrap();
        let again = RunnerTag::known("gl", tag.hash()).unwrap();
        assert_eq!(again.parse(tag.vm_name(9, 2).as_str()), Some((9, 2)));
        for stray in ["", "xyz", "0123456789", "ABCDEF01", "runner-id"] {
            assert_eq!(RunnerTag::known("gl", stray), None, "{stray}");
        }
    }

    #[test]
    fn prefixes_outside_the_strict_form_are_refused_with_the_rule() {
        for bad in ["", "GL", "1gl", "gl_", "gl-", "a-very-long-prefix-over-20"] {
            let err = RunnerTag::new(bad, "x").unwrap_err().to_string();
            assert!(err.contains("lowercase letters"), "{bad}: {err}");
        }
    }
}
