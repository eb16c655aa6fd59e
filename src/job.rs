//! What gitlab-runner tells the driver about the job: the environment of each stage and
//! the job payload in `JOB_RESPONSE_FILE`.
//!
//! Job variables arrive as `CUSTOM_ENV_<NAME>` and are controlled by whoever writes the
//! pipeline, so they are read only through [`JobContext::var`] and checked where used.
//! The job id comes from the payload the runner received from GitLab, which a job cannot
//! override, so VM names built from it cannot be aimed at another job's VM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::vm::VmName;

#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: u64,
    pub runner_token: String,
    pub image: Option<String>,
    /// The GitLab project, as the payload names it (a job cannot change it, unlike the
    /// `CI_PROJECT_*` variables); keys the project's host cache directory.
    pub project_id: Option<u64>,
    /// Seconds the job may run: the payload's `runner_info.timeout`, clamped to a week.
    pub job_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
struct Payload {
    id: u64,
    #[serde(default)]
    job_info: Option<JobInfo>,
    #[serde(default)]
    runner_info: Option<RunnerInfo>,
}

#[derive(Deserialize)]
struct JobInfo {
    #[serde(default)]
    project_id: Option<u64>,
}

#[derive(Deserialize)]
struct RunnerInfo {
    #[serde(default)]
    timeout: Option<i64>,
}

const A_WEEK: u64 = 7 * 24 * 3600;

impl JobContext {
    pub fn from_env() -> Result<JobContext> {
        // The payload gitlab-runner received from GitLab is the trusted source; the
        // variables are only a fallback for runners older than 14.1, which lack the file.
        let payload = match std::env::var_os("JOB_RESPONSE_FILE") {
            Some(path) if !path.is_empty() => {
                let text = std::fs::read(&path).with_context(|| {
                    format!(
                        "cannot read JOB_RESPONSE_FILE {}",
                        PathBuf::from(&path).display()
                    )
                })?;
                let payload: Payload = serde_json::from_slice(&text)
                    .context("JOB_RESPONSE_FILE does not hold a job payload with an `id`")?;
                Some(payload)
            }
            _ => None,
        };
        let job_id = match &payload {
            Some(p) => p.id,
            None => Self::var("CI_JOB_ID")
                .and_then(|v| v.parse().ok())
                .context("neither JOB_RESPONSE_FILE nor CUSTOM_ENV_CI_JOB_ID names the job: is gitlab-runner calling this driver?")?,
        };
        let project_id = match &payload {
            Some(p) => p.job_info.as_ref().and_then(|i| i.project_id),
            None => Self::var("CI_PROJECT_ID").and_then(|v| v.parse().ok()),
        };
        let job_timeout_secs = match &payload {
            Some(p) => p
                .runner_info
                .as_ref()
                .and_then(|r| r.timeout)
                .and_then(|t| u64::try_from(t).ok()),
            None => Self::var("CI_JOB_TIMEOUT").and_then(|v| v.parse().ok()),
        }
        .filter(|&t| t > 0)
        .map(|t| t.min(A_WEEK));
        let runner_token = Self::var("CI_RUNNER_SHORT_TOKEN")
            .map(|t| {
                t.chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(12)
                    .collect::<String>()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "local".into());
        Ok(JobContext {
            job_id,
            runner_token,
            image: Self::var("CI_JOB_IMAGE").filter(|i| !i.trim().is_empty()),
            project_id,
            job_timeout_secs,
        })
    }

    /// A job variable (`CUSTOM_ENV_<name>`), absent when unset or empty.
    pub fn var(name: &str) -> Option<String> {
        std::env::var(format!("CUSTOM_ENV_{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    }

    pub fn vm_name(&self) -> VmName {
        VmName::for_job(&self.runner_token, self.job_id)
    }
}

/// Names of the variables in our environment that carry the job's data: its variables
/// (`CUSTOM_ENV_*`: registry and SSH passwords, `CI_JOB_TOKEN`) and the payload file. A
/// process that outlives the stage (the supervisor, `tart run`, the ssh master) must not
/// inherit them, or any local user who can read its /proc environ reads the secrets.
pub fn job_env_names() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CUSTOM_ENV_") || k == "JOB_RESPONSE_FILE"
        })
        .collect()
}
