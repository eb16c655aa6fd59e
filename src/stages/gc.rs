//! `gc`: the orphan sweep on demand, and optionally pruning of old cached images.

use crate::backend::Backend;
use crate::failure::StageResult;
use crate::host::state_dir::StateDir;
use crate::settings::{Options, Settings};

/// Sweeps orphans (only reports them with `dry_run`), forgets expired public-image verdicts,
/// fills the warm pool, and prunes cached
/// images unused for `prune_images_older_than` days when given.
pub fn gc(options: &Options, dry_run: bool, prune_images_older_than: Option<u32>) -> StageResult {
    let settings = Settings::load(options)?;
    let backend = Backend::for_settings(&settings)?;
    let swept: anyhow::Result<()> = crate::rt::runtime().block_on(async {
        let root = StateDir::open(&settings.state_dir)?;
        let listing = backend.list().await?;
        let swept = backend.sweep(&listing, &root, None, dry_run).await?;
        let verb = if dry_run {
            "would remove"
        } else {
            "removed"
        };
        if swept.removed.is_empty() {
            eprintln!("no orphaned VMs");
        }
        for name in swept.removed {
            eprintln!("{verb} orphaned VM {name}");
        }
        for name in swept.foreign {
            eprintln!(
                "left alone VM {name}: {} has no record of it and it carries no owner marker naming this directory (another state directory's, or not provably orphaned)",
                root.path().display()
            );
        }
        // A registry's public verdicts expire (a repository can turn private).
        if !dry_run {
            let expired = crate::job::public_images::PublicImages::open(&root).prune();
            if expired > 0 {
                eprintln!("forgot {expired} expired public-image verdicts");
            }
        }
        // The pool's periodic pass: pull the warm images, replace stale warm VMs, refill.
        if !dry_run {
            if let Err(e) = super::warm::fill_from_gc(&settings, &root).await {
                eprintln!("warm pool: {e:#}");
            }
        }
        if let Some(days) = prune_images_older_than {
            if dry_run {
                eprintln!("would prune cached images not used for {days} days");
            } else {
                backend.prune_images(days).await?;
                eprintln!("pruned cached images not used for {days} days");
            }
        }
        Ok(())
    });
    Ok(swept?)
}
