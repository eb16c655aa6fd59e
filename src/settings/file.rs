//! The driver's YAML file (`--config`): the same names as the long flags, in snake_case,
//! unknown keys refused. Found at `--config`, else in the user's or the system's config
//! directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::model::{Overridable, PullPolicy, Resource, TransportKind};
use crate::orchard::settings::Backend;

/// The `--config` file. Same names as the long flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSettings {
    pub(super) tart_executable: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) concurrency: Option<u32>,
    pub(super) macos_vm_limit: Option<u32>,
    pub(super) cpu: Option<Resource>,
    pub(super) memory: Option<Resource>,
    pub(super) auto_resources: Option<bool>,
    pub(super) display: Option<String>,
    pub(super) timeout: Option<u64>,
    pub(super) builds_dir: Option<PathBuf>,
    pub(super) cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) volumes: Vec<String>,
    #[serde(default)]
    pub(super) exclude_images: Vec<String>,
    #[serde(default)]
    pub(super) allow_images: Vec<String>,
    pub(super) default_image: Option<String>,
    pub(super) pull_policy: Option<PullPolicy>,
    #[serde(default)]
    pub(super) allowed_pull_policies: Vec<PullPolicy>,
    pub(super) transport: Option<TransportKind>,
    pub(super) shell: Option<String>,
    pub(super) ssh_username: Option<String>,
    pub(super) ssh_password_file: Option<PathBuf>,
    pub(super) ssh_key_file: Option<PathBuf>,
    pub(super) install_gitlab_runner: Option<bool>,
    pub(super) force_install_gitlab_runner: Option<bool>,
    pub(super) gitlab_runner_version: Option<String>,
    pub(super) softnet: Option<bool>,
    #[serde(default)]
    pub(super) public_images: Vec<String>,
    #[serde(rename = "host_registry_credentials")]
    pub(super) host_creds: Option<bool>,
    pub(super) allow_local_images: Option<bool>,
    #[serde(default)]
    pub(super) allow_image_globs: Vec<String>,
    pub(super) guest_builds_dir: Option<String>,
    pub(super) guest_cache_dir: Option<String>,
    pub(super) job_overrides: Option<Vec<Overridable>>,
    #[serde(default)]
    pub(super) softnet_allow: Vec<String>,
    pub(super) bridged: Option<String>,
    pub(super) random_mac: Option<bool>,
    pub(super) nested: Option<bool>,
    pub(super) root_disk_opts: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) insecure_pull: Option<bool>,
    pub(super) pull_concurrency: Option<u32>,
    pub(super) auto_prune: Option<bool>,
    pub(super) copy_gitlab_runner: Option<bool>,
    pub(super) backend: Option<Backend>,
    pub(super) orchard: Option<crate::orchard::settings::OrchardFile>,
    pub(super) unsafe_job_identity_from_variables: Option<bool>,
    pub(super) warm_pool: Option<u32>,
    #[serde(default)]
    pub(super) warm_images: Vec<String>,
    pub(super) warm_expiry: Option<u64>,
}

/// Where the driver looks for its config file when `--config` is not given:
/// `~/.config/gitlab-runner-tart-driver/config.yaml`, then
/// `/etc/gitlab-runner-tart-driver/config.yaml`.
pub(super) fn default_config_file() -> Option<PathBuf> {
    let user = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".config/gitlab-runner-tart-driver/config.yaml"));
    let system = Some(PathBuf::from("/etc/gitlab-runner-tart-driver/config.yaml"));
    [user, system].into_iter().flatten().find(|p| p.is_file())
}

pub(super) fn read_file_settings(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the driver config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileSettings::default());
    }
    serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("driver config file {} is invalid: {e}", path.display()))
}
