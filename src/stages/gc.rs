//! `gc`: the orphan sweep on demand, and optionally pruning of old cached images.

use std::time::Duration;

use anyhow::bail;

use crate::cli::GcArgs;
use crate::failure::StageResult;
use crate::lifecycle;
use crate::settings::Settings;
use crate::tart::Tart;

pub fn gc(args: &GcArgs) -> StageResult {
    let settings = Settings::load(&args.options)?;
    let tart = Tart::new(&settings.tart_executable);
    let swept: anyhow::Result<()> = super::runtime().block_on(async {
        let removed = lifecycle::sweep(&tart, &settings, None, args.dry_run).await?;
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if removed.is_empty() {
            eprintln!("no orphaned VMs");
        }
        for name in removed {
            eprintln!("{verb} orphaned VM {name}");
        }
        if let Some(days) = args.prune_images_older_than {
            if args.dry_run {
                eprintln!("would prune cached images not used for {days} days");
            } else {
                let days = days.to_string();
                let done = tart
                    .capture(
                        &["prune", "--entries", "caches", "--older-than", &days],
                        Duration::from_secs(600),
                    )
                    .await?;
                if !done.ok() {
                    bail!("`tart prune` failed: {}", done.message());
                }
                eprintln!("pruned cached images not used for {days} days");
            }
        }
        Ok(())
    });
    Ok(swept?)
}
