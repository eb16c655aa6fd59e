//! Whose VMs are whose on a shared controller: the runner identity hashed into every VM name
//! ([`RunnerTag`]), and the state directory's list of the runners that made VMs from it.
//!
//! A tag is the hash of two things. The state directory's own random id (`orchard/runner-id`)
//! tells this host from another host of the same runner (GitLab lets one runner token serve
//! several hosts). The runner's short token (the part of the local record's name that
//! `CI_RUNNER_SHORT_TOKEN` gives) tells apart the runners that share this host's state
//! directory, whose job ids can be equal when they serve different GitLab instances. A job's
//! stages, which know the runner, touch only that runner's tag; `gc`, which runs outside any
//! job, touches the tags of runners that registered themselves here (`orchard/runners/<hash>`,
//! written before the first VM of that runner is created).

use anyhow::{Context, Result};
use ring::rand::SecureRandom;

use super::name::RunnerTag;
use crate::host::state_dir::StateDir;

const ORCHARD: &str = "orchard";
const RUNNER_ID: &str = "runner-id";
const RUNNERS: &str = "runners";

/// The tag of `runner`'s VMs made from this state directory.
pub fn runner_tag(root: &StateDir, prefix: &str, runner: &str) -> Result<RunnerTag> {
    let id = state_dir_id(root)?;
    RunnerTag::new(prefix, &format!("{id} {runner}"))
}

/// Like [`runner_tag`], and remembers the tag for `gc`: called before `runner`'s VM exists.
pub fn register(root: &StateDir, prefix: &str, runner: &str) -> Result<RunnerTag> {
    let tag = runner_tag(root, prefix, runner)?;
    let runners = root.subdir(ORCHARD)?.subdir(RUNNERS)?;
    if !runners.exists(tag.hash()) {
        // Nothing in it: the name is the record. Another prepare may register it meanwhile.
        runners.create_once(tag.hash(), b"")?;
    }
    Ok(tag)
}

/// The tags of every runner that made VMs from this state directory.
pub fn registered(root: &StateDir, prefix: &str) -> Result<Vec<RunnerTag>> {
    let Some(orchard) = root.existing_subdir(ORCHARD)? else {
        return Ok(Vec::new());
    };
    let Some(runners) = orchard.existing_subdir(RUNNERS)? else {
        return Ok(Vec::new());
    };
    Ok(runners
        .entries()
        .iter()
        .filter_map(|hash| RunnerTag::known(prefix, hash))
        .collect())
}

/// The state directory's random id, made on first use.
fn state_dir_id(root: &StateDir) -> Result<String> {
    let dir = root.subdir(ORCHARD)?;
    if let Some(id) = dir.read_string(RUNNER_ID).filter(|s| !s.trim().is_empty()) {
        return Ok(id.trim().to_string());
    }
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the runner's Orchard id"))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Two first prepares may race: one id wins, and both use it.
    if dir.create_once(RUNNER_ID, id.as_bytes())? {
        return Ok(id);
    }
    dir.read_string(RUNNER_ID)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .context("the state directory's orchard/runner-id is empty: remove it")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state");
        let root = StateDir::open_ignoring_socket_limit(&path).unwrap();
        (tmp, root)
    }

    #[test]
    fn two_runners_of_one_state_directory_get_different_tags() {
        let (_tmp, root) = root();
        let a = runner_tag(&root, "gl", "runnera").unwrap();
        let b = runner_tag(&root, "gl", "runnerb").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, runner_tag(&root, "gl", "runnera").unwrap(), "stable");
        assert_eq!(b.parse(a.vm_name(7, 1).as_str()), None);
    }

    #[test]
    fn one_runner_on_two_hosts_gets_two_tags() {
        let (_one, a) = root();
        let (_two, b) = root();
        assert_ne!(
            runner_tag(&a, "gl", "runnera").unwrap(),
            runner_tag(&b, "gl", "runnera").unwrap()
        );
    }

    #[test]
    fn runners_racing_to_their_first_vm_all_get_one_id_and_no_error() {
        for _ in 0..20 {
            let (_tmp, root) = root();
            let tags: Vec<Result<RunnerTag>> = std::thread::scope(|s| {
                let threads: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| register(&root, "gl", "runnera")))
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let first = tags[0].as_ref().unwrap();
            for tag in &tags {
                assert_eq!(tag.as_ref().unwrap(), first);
            }
            assert_eq!(
                registered(&root, "gl").unwrap(),
                std::slice::from_ref(first)
            );
        }
    }

    #[test]
    fn gc_knows_exactly_the_runners_that_registered() {
        let (_tmp, root) = root();
        assert_eq!(registered(&root, "gl").unwrap(), Vec::new());
        let a = register(&root, "gl", "runnera").unwrap();
        let b = register(&root, "gl", "runnerb").unwrap();
        register(&root, "gl", "runnera").unwrap();
        let mut known = registered(&root, "gl").unwrap();
        known.sort_by(|x, y| x.hash().cmp(y.hash()));
        let mut want = vec![a, b];
        want.sort_by(|x, y| x.hash().cmp(y.hash()));
        assert_eq!(known, want);
    }
}
