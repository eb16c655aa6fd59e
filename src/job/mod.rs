//! The job's request: who the job is (this file: its payload and variables), what it asks
//! for within what the admin allows (`request`), its image (`image`) and who may pull or
//! clone which image with which credentials (`registry_access`, and the public digests it
//! remembers, `public_images`). May use: settings, the guest side's types a job chooses
//! among (`guest::transport::ssh::Auth`, `guest::RunnerInstall`), the host side (Tart's
//! client and home, the state directory, VM names and their prefix, the registry policy, the
//! NAT range) and the shared kinds; never the warm pool, the backends, the stages, doctor or
//! the command line.
//!
//! What gitlab-runner tells the driver about the job: the environment of each stage and
//! the job payload in `JOB_RESPONSE_FILE`.
//!
//! Job variables arrive as `CUSTOM_ENV_<NAME>` and are controlled by whoever writes the
//! pipeline, so they are read only through [`JobContext::var`] and checked where used.
//! The job's identity comes from the payload the runner received from GitLab, which a job
//! cannot override, and from the runner's own `CI_RUNNER_SHORT_TOKEN` (refused when the job
//! sets a variable of that name), so VM names and cache directories built from it cannot be
//! aimed at another job's.

#[cfg(test)]
mod hostile_tests;
pub mod image;
pub mod public_images;
pub mod registry_access;
pub mod request;

use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use crate::failure::Failure;
use crate::host::vm::VmName;
use crate::settings::Settings;

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
    #[serde(default)]
    variables: Option<Vec<PayloadVariable>>,
    #[serde(default)]
    secrets: Option<serde_json::Map<String, serde_json::Value>>,
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

#[derive(Deserialize)]
struct PayloadVariable {
    #[serde(default)]
    key: String,
}

impl Payload {
    /// Whether the job itself defines variable `name` (GitLab sends every variable of the
    /// pipeline in `variables`, and names `secrets:` it will resolve): a variable the
    /// runner sets itself that the job also sets is the job's value, not the runner's.
    fn job_defines(&self, name: &str) -> bool {
        self.variables.iter().flatten().any(|v| v.key == name)
            || self.secrets.as_ref().is_some_and(|s| s.contains_key(name))
    }
}

const A_WEEK: u64 = 7 * 24 * 3600;

/// The variable in which gitlab-runner names itself; the server never sends it.
const RUNNER_TOKEN_VAR: &str = "CI_RUNNER_SHORT_TOKEN";

impl JobContext {
    /// The job as gitlab-runner describes it. Its identity (job, project, runner) comes from
    /// the payload GitLab sent (`JOB_RESPONSE_FILE`) and from what the runner sets itself,
    /// never from a variable the job controls; without a payload the driver refuses, unless
    /// the admin opted in for runners older than 14.1.
    pub fn from_env(settings: &Settings) -> Result<JobContext, Failure> {
        let payload = match std::env::var_os("JOB_RESPONSE_FILE").filter(|p| !p.is_empty()) {
            Some(path) => {
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
            None if settings.unsafe_job_identity_from_variables => None,
            None => {
                return Err(Failure::System(anyhow::anyhow!(
                    "JOB_RESPONSE_FILE is not set, so nothing trustworthy names this job (its variables can name any other job): run this driver from gitlab-runner 14.1 or newer, or accept that risk with --unsafe-job-identity-from-variables"
                )))
            }
        };
        let Some(payload) = payload else {
            return Self::from_variables();
        };
        if payload.job_defines(RUNNER_TOKEN_VAR) {
            return Err(Failure::rejected(format!(
                "the job sets {RUNNER_TOKEN_VAR}, which names the runner and its VMs: remove the variable from the pipeline, project or group settings"
            )));
        }
        Ok(JobContext {
            job_id: payload.id,
            runner_token: Self::runner_token(),
            image: Self::image(),
            project_id: payload.job_info.as_ref().and_then(|i| i.project_id),
            job_timeout_secs: payload
                .runner_info
                .as_ref()
                .and_then(|r| r.timeout)
                .and_then(|t| u64::try_from(t).ok())
                .filter(|&t| t > 0)
                .map(|t| t.min(A_WEEK)),
        })
    }

    /// Old runners (before 14.1) write no payload: everything comes from variables the
    /// job can set. Only with the admin's `--unsafe-job-identity-from-variables`.
    fn from_variables() -> Result<JobContext, Failure> {
        eprintln!("WARNING: no JOB_RESPONSE_FILE: this job's identity comes from its own variables (--unsafe-job-identity-from-variables); upgrade gitlab-runner to 14.1 or newer");
        let job_id = Self::var("CI_JOB_ID")
            .and_then(|v| v.parse().ok())
            .context("neither JOB_RESPONSE_FILE nor CUSTOM_ENV_CI_JOB_ID names the job: is gitlab-runner calling this driver?")?;
        Ok(JobContext {
            job_id,
            runner_token: Self::runner_token(),
            image: Self::image(),
            project_id: Self::var("CI_PROJECT_ID").and_then(|v| v.parse().ok()),
            job_timeout_secs: Self::var("CI_JOB_TIMEOUT")
                .and_then(|v| v.parse().ok())
                .filter(|&t| t > 0)
                .map(|t: u64| t.min(A_WEEK)),
        })
    }

    fn runner_token() -> String {
        Self::var(RUNNER_TOKEN_VAR)
            .map(|t| {
                t.chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(12)
                    .collect::<String>()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "local".into())
    }

    fn image() -> Option<String> {
        Self::var("CI_JOB_IMAGE").filter(|i| !i.trim().is_empty())
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
