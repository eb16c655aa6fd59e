//! Doctor's view of the warm pool (`--warm-pool`): what it keeps, what each warm VM is
//! doing, and the boots that failed.

use super::report::Check;
use crate::host::state_dir::StateDir;
use crate::settings::Settings;
use crate::warm::pool::{self, Status};
use crate::warm::replenish;

const NAME: &str = "warm pool";

pub fn check_pool(settings: &Settings) -> Check {
    // Doctor creates nothing: no state directory, no pool.
    let root = settings
        .state_dir
        .is_dir()
        .then(|| StateDir::open_ignoring_socket_limit(&settings.state_dir).ok())
        .flatten();
    let members = root
        .as_ref()
        .and_then(|root| pool::members(root).ok())
        .unwrap_or_default();
    if !settings.warm.enabled() {
        return if members.iter().any(|m| m.status != Status::Claimed) {
            Check::warn(
                NAME,
                format!("off (--warm-pool 0), but {} warm VM(s) are still kept", members.len()),
                "run `gitlab-runner-tart-driver warm --warm-pool 0` (or the next `gc`) to stop them",
            )
        } else {
            Check::skip(NAME, "off (--warm-pool 0): every job boots its own VM")
        };
    }
    if settings.cache_dir.is_some() {
        return Check::warn(
            NAME,
            format!("--warm-pool {} is set, but a cache dir is configured, so no warm VM is used", settings.warm.pool),
            "drop --cache-dir (use GitLab's distributed cache instead) to use the pool, or set --warm-pool 0",
        );
    }
    let now = pool::now_unix();
    let described: Vec<String> = members
        .iter()
        .map(|m| {
            let image = m.image().unwrap_or("?");
            match m.status {
                Status::Ready(at) => {
                    format!("{image} ready since {}", pool::ago(now.saturating_sub(at)))
                }
                Status::Booting => format!("{image} booting"),
                Status::Claimed => format!("{image} running a job"),
                Status::Dead => format!("{image} stopped (the next sweep removes it)"),
            }
        })
        .collect();
    let ready = members
        .iter()
        .filter(|m| matches!(m.status, Status::Ready(_)))
        .count();
    let detail = format!(
        "{ready} of {} ready (images: {}; expiry {} min){}",
        settings.warm.pool,
        settings.warm.images.join(", "),
        settings.warm.expiry.as_secs() / 60,
        if described.is_empty() {
            String::new()
        } else {
            format!(": {}", described.join("; "))
        }
    );
    let failures = root.as_ref().map(replenish::failures).unwrap_or_default();
    if failures.is_empty() {
        return Check::pass(NAME, detail);
    }
    let failed: Vec<String> = failures
        .iter()
        .map(|(image, f)| {
            format!(
                "{image} ({}) failed to boot {}: {}",
                f.digest,
                pool::ago(now.saturating_sub(f.at)),
                f.message
            )
        })
        .collect();
    Check::warn(
        NAME,
        format!("{detail}. Not booted again: {}", failed.join("; ")),
        "fix the image (its boot fails in every warm VM), then run `gitlab-runner-tart-driver warm` to retry",
    )
}
