//! The host directories a local job's VM gets: its own builds directory, its project's
//! cache directory and the admin's volumes.

use anyhow::Context;

use crate::guest::Share;
use crate::job::JobContext;
use crate::settings::Settings;

/// The host directories this job's VM gets: its own builds directory, its project's cache
/// directory and the admin's volumes.
pub fn shares(settings: &Settings, job: &JobContext, vm: &str) -> anyhow::Result<Vec<Share>> {
    let mut shares = Vec::new();
    if let Some(builds) = &settings.builds_dir {
        let dir = builds.join(vm);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the builds directory {}", dir.display()))?;
        shares.push(Share {
            name: "tartdrv-builds".into(),
            host: dir,
            guest: settings.guest_builds_dir.clone(),
            read_only: false,
        });
    }
    if let Some(cache) = &settings.cache_dir {
        // One cache per project, keyed by the id in GitLab's payload (not by a variable the
        // job could set): a job cannot read or poison another project's cache.
        let project = match job.project_id {
            Some(id) => format!("project-{id}"),
            None => "project-unknown".to_string(),
        };
        let dir = cache.join(project);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
        shares.push(Share {
            name: "tartdrv-cache".into(),
            host: dir,
            guest: settings.guest_cache_dir.clone(),
            read_only: false,
        });
    }
    for (i, volume) in settings.volumes.iter().enumerate() {
        if !volume.host.is_dir() {
            anyhow::bail!(
                "volume host directory {} does not exist: create it or fix --volume",
                volume.host.display()
            );
        }
        shares.push(Share {
            name: format!("tartdrv-vol{i}"),
            host: volume.host.clone(),
            guest: volume.guest.clone(),
            read_only: volume.read_only,
        });
    }
    Ok(shares)
}
