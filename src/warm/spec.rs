//! What a VM is started with, as one comparable value: a warm VM serves a job only when the
//! job's VM would have been started with exactly the same.
//!
//! The job's side is computed from its request before any clone: the image's digest and
//! configuration come from Tart's OCI cache (`cache/OCIs/<host>/<path>/<tag>`, a link to
//! the digest's directory; spec: on-disk layout), and the sizing from the same rules
//! prepare applies to a fresh clone. Anything not in here (shell, user, time zone, the
//! gitlab-runner install) is applied after the claim, over the job's own connection.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host;
use crate::host::tart_home::{self, VmConfig};
use crate::job::request::Request;
use crate::settings::Settings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSpec {
    pub image: String,
    /// `sha256:<hex>` of the image the clone was made from.
    pub digest: String,
    pub os: String,
    pub cpu: u64,
    pub memory_mib: u64,
    pub display: Option<String>,
    pub random_mac: bool,
    /// `tart run`'s options: graphics, VNC, network mode (NAT, Softnet and its allow-list,
    /// bridged), nested virtualization, root disk options.
    pub run_args: Vec<String>,
    /// The admin's volumes as shared (the builds share is per VM and always present when a
    /// builds dir is configured).
    pub volumes: Vec<String>,
    pub builds_share: bool,
}

impl WarmSpec {
    /// What the VM for `request` is (or would be) started with, given the image's digest
    /// and configuration and the VM's final size.
    pub fn new(
        settings: &Settings,
        request: &Request,
        digest: &str,
        config: &VmConfig,
    ) -> WarmSpec {
        WarmSpec {
            image: request.image.name.clone(),
            digest: digest.to_string(),
            os: config.os.clone(),
            cpu: config.cpu,
            memory_mib: config.memory_mib,
            display: request.display.as_ref().map(|d| d.0.clone()),
            random_mac: request.random_mac,
            run_args: request.run_args(settings, &config.os),
            volumes: settings
                .volumes
                .iter()
                .map(|v| format!("{}:{}:{}", v.host.display(), v.guest, v.read_only))
                .collect(),
            builds_share: settings.builds_dir.is_some(),
        }
    }

    /// What the job's VM would be started with, from the cached image `source` (the job's
    /// image, or the `<repository>@sha256:…` it was approved for: a tag read again here
    /// could have been re-pointed since), or why that cannot be known: a local VM name has
    /// no digest to compare, and an image too big for this host's VMs gets no VM at all.
    pub fn for_job(
        settings: &Settings,
        request: &Request,
        source: &str,
    ) -> Result<WarmSpec, String> {
        let (digest, mut config) = cached_image(source)
            .ok_or_else(|| format!("{} is not a cached OCI image here", request.image.name))?;
        let sizing = host::vm_resources(
            &settings.host_limits(),
            config.minimum,
            config.os != "linux",
        )
        .map_err(|too_small| match too_small {
            host::TooSmall::Image(why) | host::TooSmall::Settings(why) => why,
        })?;
        config.cpu = sizing.cpu.unwrap_or(config.cpu);
        config.memory_mib = sizing.memory_mib.unwrap_or(config.memory_mib);
        Ok(WarmSpec::new(settings, request, &digest, &config))
    }

    /// The settings in which `self` (a warm VM) differs from `wanted` (the job's), named
    /// for the job log.
    pub fn differences(&self, wanted: &WarmSpec) -> Vec<&'static str> {
        let mut why = Vec::new();
        let mut differs = |what: &'static str, same: bool| {
            if !same {
                why.push(what);
            }
        };
        differs("image", self.image == wanted.image);
        differs("image digest", self.digest == wanted.digest);
        differs("guest OS", self.os == wanted.os);
        differs("CPUs", self.cpu == wanted.cpu);
        differs("memory", self.memory_mib == wanted.memory_mib);
        differs("display", self.display == wanted.display);
        differs("random MAC", self.random_mac == wanted.random_mac);
        differs(
            "tart run options (network, nested, disk, graphics)",
            self.run_args == wanted.run_args,
        );
        differs(
            "shared directories",
            self.volumes == wanted.volumes && self.builds_share == wanted.builds_share,
        );
        why
    }
}

/// The digest and configuration of a cached OCI image, read from Tart's cache.
pub fn cached_image(image: &str) -> Option<(String, VmConfig)> {
    let dir = cache_entry(&tart_home::home()?, image)?;
    let target = std::fs::canonicalize(&dir).ok()?;
    let digest = target.file_name()?.to_str()?.to_string();
    if !digest.starts_with("sha256:") {
        return None;
    }
    let config = tart_home::config_at(&target.join("config.json"))?;
    Some((digest, config))
}

/// `cache/OCIs/<host>/<path…>/<tag or digest>` for an OCI reference.
fn cache_entry(tart_home: &std::path::Path, image: &str) -> Option<PathBuf> {
    let (host, rest) = image.split_once('/')?;
    let (path, reference) = match rest.split_once('@') {
        Some((path, digest)) => (path, digest),
        None => rest.rsplit_once(':')?,
    };
    if [host, path, reference]
        .iter()
        .any(|p| p.is_empty() || p.contains(".."))
    {
        return None;
    }
    let mut dir = tart_home.join("cache/OCIs").join(host.replace(':', "%3A"));
    for part in path.split('/') {
        dir.push(part);
    }
    Some(dir.join(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WarmSpec {
        WarmSpec {
            image: "ghcr.io/org/img:1".into(),
            digest: "sha256:aa".into(),
            os: "darwin".into(),
            cpu: 2,
            memory_mib: 4096,
            display: None,
            random_mac: false,
            run_args: vec!["--no-graphics".into()],
            volumes: vec![],
            builds_share: true,
        }
    }

    #[test]
    fn a_spec_equal_in_everything_has_no_differences() {
        assert!(spec().differences(&spec()).is_empty());
    }

    #[test]
    fn each_difference_is_named_for_the_job_log() {
        let mut other = spec();
        other.digest = "sha256:bb".into();
        other.run_args.push("--net-softnet".into());
        other.memory_mib = 8192;
        assert_eq!(
            spec().differences(&other),
            vec![
                "image digest",
                "memory",
                "tart run options (network, nested, disk, graphics)"
            ]
        );
    }

    #[test]
    fn cache_entries_follow_tarts_layout() {
        let home = std::path::Path::new("/th");
        assert_eq!(
            cache_entry(home, "ghcr.io/cirruslabs/macos:latest"),
            Some(PathBuf::from(
                "/th/cache/OCIs/ghcr.io/cirruslabs/macos/latest"
            ))
        );
        assert_eq!(
            cache_entry(home, "reg:5000/a/b@sha256:ff"),
            Some(PathBuf::from("/th/cache/OCIs/reg%3A5000/a/b/sha256:ff"))
        );
        assert_eq!(cache_entry(home, "local-vm"), None);
    }
}
