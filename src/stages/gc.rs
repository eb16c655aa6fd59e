//! `gc`: the orphan sweep on demand, and optionally pruning of old cached images.

use crate::backend::Backend;
use crate::cli::GcArgs;
use crate::failure::StageResult;
use crate::host::state_dir::StateDir;
use crate::settings::Settings;

pub fn gc(args: &GcArgs) -> StageResult {
    let settings = Settings::load(&args.options)?;
    let backend = Backend::for_settings(&settings)?;
    let swept: anyhow::Result<()> = super::runtime().block_on(async {
        let root = StateDir::open(&settings.state_dir)?;
        let listing = backend.list().await?;
        let swept = backend.sweep(&listing, &root, None, args.dry_run).await?;
        let verb = if args.dry_run {
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
        // The pool's periodic pass: pull the warm images, replace stale warm VMs, refill.
        if !args.dry_run {
            if let Err(e) = super::warm::fill_from_gc(&settings, &root).await {
                eprintln!("warm pool: {e:#}");
            }
        }
        if let Some(days) = args.prune_images_older_than {
            if args.dry_run {
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
