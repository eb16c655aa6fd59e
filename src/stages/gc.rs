//! `gc`: the orphan sweep on demand.

use crate::cli::GcArgs;
use crate::failure::StageResult;
use crate::lifecycle;
use crate::settings::Settings;
use crate::tart::Tart;

pub fn gc(args: &GcArgs) -> StageResult {
    let settings = Settings::load(&args.options)?;
    let tart = Tart::new(&settings.tart_executable);
    let removed =
        super::runtime().block_on(lifecycle::sweep(&tart, &settings, None, args.dry_run))?;
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
    Ok(())
}
