//! The VM a job asks Orchard for: the job's image (already vetted by the same image policy
//! as on one Mac), headless, never restarted, placed by the admin's labels and resources,
//! with the admin's read-only worker directories.
//!
//! Nothing of the job's credentials goes into it: Orchard has no field for registry
//! credentials (workers pull with their own `tart login`, so `images` decides which images a
//! job may name), and the guest's password would be readable by every `compute:read`
//! account (spec/orchard.md §1.2, §2.7).
//!
//! Softnet: `settings.softnet` is on by default with `--backend orchard` (a worker runs other
//! runners' VMs beside this one), asked for under both of Orchard's field names.

use crate::job::request::Request;
use crate::model::{PullPolicy, Resource};
use crate::orchard::settings::OrchardSettings;
use crate::orchard::types::{HostDir, VmSpec};
use crate::settings::Settings;

pub fn for_job(
    name: &str,
    request: &Request,
    settings: &Settings,
    orchard: &OrchardSettings,
) -> VmSpec {
    let fixed = |r: Option<Resource>| match r {
        Some(Resource::Fixed(n)) => Some(n),
        // `auto` sizes from this host, which is not where the VM runs: the worker's
        // defaults apply instead.
        _ => None,
    };
    let softnet = request.softnet || !request.softnet_allow.is_empty();
    VmSpec {
        name: name.to_string(),
        image: request.image.name.clone(),
        image_pull_policy: match request.pull_policy {
            PullPolicy::Always => "Always",
            // Orchard has no "never" (a worker pulls what it lacks): `Fleet` refuses it.
            PullPolicy::IfNotPresent | PullPolicy::Never => "IfNotPresent",
        },
        cpu: fixed(settings.cpu),
        memory: fixed(settings.memory),
        headless: true,
        net_softnet: softnet,
        net_softnet_deprecated: softnet,
        net_softnet_allow: request.softnet_allow.clone(),
        restart_policy: "Never",
        resources: orchard.placement.resources.clone(),
        labels: orchard.placement.labels.clone(),
        host_dirs: orchard
            .placement
            .host_dirs
            .iter()
            .map(|(name, path)| HostDir {
                name: name.clone(),
                path: path.display().to_string(),
                ro: true,
            })
            .collect(),
    }
}
