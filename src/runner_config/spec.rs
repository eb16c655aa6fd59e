//! The spec `runner-config` reads: JSON naming every runner with the *path* of its token
//! file, checked before anything is written.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub(super) concurrent: u32,
    #[serde(default = "default_check_interval")]
    pub(super) check_interval: u32,
    #[serde(default)]
    pub(super) shutdown_timeout: Option<u32>,
    #[serde(default)]
    pub(super) log_level: Option<String>,
    pub(super) runners: Vec<RunnerSpec>,
    #[serde(default)]
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

pub(super) fn default_check_interval() -> u32 {
    3
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RunnerSpec {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) token_file: PathBuf,
    #[serde(default)]
    pub(super) limit: Option<u32>,
    #[serde(default)]
    pub(super) executor: Option<String>,
    pub(super) driver: String,
    #[serde(default)]
    pub(super) driver_config: Option<String>,
    #[serde(default)]
    pub(super) concurrency: Option<u32>,
    #[serde(default)]
    pub(super) builds_dir: Option<String>,
    #[serde(default)]
    pub(super) cache_dir: Option<String>,
    #[serde(default)]
    pub(super) environment: Vec<String>,
    #[serde(default)]
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

pub(super) fn load_spec(path: &Path) -> Result<Spec> {
    let raw = fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read spec file {}: {e}; pass the JSON spec with --spec <file>",
            path.display()
        )
    })?;
    let spec: Spec = serde_json::from_str(&raw).map_err(|e| {
        anyhow::anyhow!(
            "spec file {} is not a valid runner spec: {e}; see `runner-config --help` for the format",
            path.display()
        )
    })?;
    validate(&spec, path)?;
    Ok(spec)
}

pub(super) fn validate(spec: &Spec, path: &Path) -> Result<()> {
    let p = path.display();
    if spec.concurrent == 0 {
        bail!("spec file {p}: concurrent is 0, so no job would ever run; set it to 1 or more");
    }
    if spec.runners.is_empty() {
        bail!("spec file {p}: runners is empty; declare at least one runner");
    }
    for key in ["concurrent", "runners", "check_interval"] {
        if spec.extra.contains_key(key) {
            bail!("spec file {p}: extra.{key} is not allowed; set the top-level `{key}` field instead");
        }
    }
    for (i, r) in spec.runners.iter().enumerate() {
        let at = format!("spec file {p}: runners[{i}] ({:?})", r.name);
        if r.name.trim().is_empty() {
            bail!("spec file {p}: runners[{i}] has an empty name; give every runner a name");
        }
        if !(r.url.starts_with("https://") || r.url.starts_with("http://")) {
            bail!("{at}: url {:?} is not an http(s) URL; use the GitLab instance URL, e.g. https://gitlab.example.com", r.url);
        }
        if let Some(e) = &r.executor {
            if e != "custom" {
                bail!("{at}: executor {e:?} is not supported; this driver needs executor \"custom\" (or leave it out)");
            }
        }
        if r.driver.trim().is_empty() {
            bail!("{at}: driver is empty; give the path of the gitlab-runner-tart-driver binary");
        }
        if let Some(c) = r.concurrency {
            if c != spec.concurrent {
                bail!(
                    "{at}: concurrency {c} differs from concurrent {}; they must be equal (or leave concurrency out)",
                    spec.concurrent
                );
            }
        }
        if r.limit == Some(0) {
            // 0 means unlimited to GitLab Runner, but the host cannot run unlimited VMs.
            bail!(
                "{at}: limit 0 means unlimited; set a limit between 1 and concurrent ({})",
                spec.concurrent
            );
        }
        if r.extra.contains_key("token") {
            bail!(
                "{at}: extra.token is not allowed; put the token in the file named by token_file"
            );
        }
        for d in [&r.builds_dir, &r.cache_dir].into_iter().flatten() {
            if d.trim().is_empty() {
                bail!("{at}: builds_dir and cache_dir must not be empty; leave them out to use the defaults");
            }
        }
    }
    Ok(())
}
