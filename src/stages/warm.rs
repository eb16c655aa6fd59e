//! `warm`: fills the warm pool. Started detached after each claim and cleanup (with
//! `--background`), by `gc`, or by the admin (the nix-darwin module runs it when the runner
//! agent starts).
//!
//! One replenisher at a time per state directory; the pass itself is the backend's
//! (`backend::tart::fill`, local Tart's warm pool). The admin's `warm` forgets the recorded
//! failed boots first, so their images are tried again.

use std::time::Duration;

use anyhow::Result;

use crate::backend::Backend;
use crate::failure::StageResult;
use crate::host::state_dir::StateDir;
use crate::settings::{Options, Settings};
use crate::warm::{pool, replenish};

/// One pass over the pool; `pull` pulls the warm images first, `background` (a stage started
/// it) waits for a replenisher at work and keeps the recorded failed boots.
pub fn warm(options: &Options, pull: bool, background: bool) -> StageResult {
    let settings = Settings::load(options)?;
    if settings.warm.enabled() && settings.cache_dir.is_some() {
        eprintln!("The warm pool is not used while a cache dir is configured (--cache-dir): a VM booted before its job cannot share that job's project cache");
    }
    let root = StateDir::open(&settings.state_dir)?;
    // A background pass waits for the one before it: that one may have missed this change.
    let wait = if background {
        Duration::from_secs(15 * 60)
    } else {
        Duration::ZERO
    };
    let Some(_lock) = replenish::lock(&root, wait)? else {
        eprintln!("Another `warm` is filling the pool right now");
        return Ok(());
    };
    if !background {
        // The admin asks again: images whose boot failed get another chance.
        replenish::forget_failures(&root)?;
    }
    let backend = Backend::for_settings(&settings)?;
    crate::rt::runtime().block_on(backend.fill_pool(&root, pull))?;
    Ok(())
}

/// One pass over the pool, for `gc` too (which holds no lock of the replenisher's: it takes
/// it here, and skips the pass if a replenisher is at work).
pub async fn fill_from_gc(settings: &Settings, root: &StateDir) -> Result<()> {
    if !settings.warm.enabled() && pool::members(root)?.is_empty() {
        return Ok(());
    }
    let Some(_lock) = replenish::lock(root, Duration::ZERO)? else {
        eprintln!("warm pool: a replenisher is at work; skipped");
        return Ok(());
    };
    Backend::for_settings(settings)?.fill_pool(root, true).await
}
