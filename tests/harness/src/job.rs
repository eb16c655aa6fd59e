//! `Job`: what GitLab sends (the job payload) plus test-only controls (cancel/abort).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// One job variable as GitLab sends it (`variables[]` of the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    pub public: bool,
    pub file: bool,
    pub masked: bool,
    /// `raw`: not expanded.
    pub raw: bool,
}

impl Variable {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Variable {
        Variable {
            key: key.into(),
            value: value.into(),
            public: true,
            file: false,
            masked: false,
            raw: false,
        }
    }
    pub fn masked(mut self) -> Self {
        self.masked = true;
        self.public = false;
        self
    }
    pub fn file(mut self) -> Self {
        self.file = true;
        self
    }
    pub fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
}

/// `when:` of cache and artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    pub(crate) fn applies(self, job_ok: bool) -> bool {
        match self {
            When::Always => true,
            When::OnSuccess => job_ok,
            When::OnFailure => !job_ok,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            When::Always => "always",
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
        }
    }
}

/// A job. Build with `Job::new()` and the chained setters.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub stage: String,
    /// Project path (slug), e.g. `group/project`.
    pub project: String,
    pub project_id: u64,
    pub pipeline_id: u64,
    pub image: Option<String>,
    pub services: Vec<String>,
    pub variables: Vec<Variable>,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// Extra commands run (after the simulated checkout) in `get_sources`.
    pub get_sources_script: Vec<String>,
    pub cache: Option<When>,
    pub cache_key: String,
    pub artifacts: Option<When>,
    /// Whether some dependency has artifacts (enables `download_artifacts`).
    pub download_artifacts: bool,
    /// `release:` step: the commands of `step_release`.
    pub release: Option<Vec<String>>,
    /// `runner_info.timeout` (default 3600 s).
    pub timeout: Duration,
    pub cancel: Option<(String, Duration)>,
    pub abort: Option<(String, Duration)>,
    pub commit_sha: String,
    pub ref_name: String,
}

fn next_job_id() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let c = NEXT.get_or_init(|| {
        let pid = std::process::id() as u64;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        // pid in the high part, time below, room for 1000 jobs per process
        AtomicU64::new(((pid % 4_000_000) * 1_000_000 + (t % 1000) * 1000) + 1)
    });
    c.fetch_add(1, Ordering::Relaxed)
}

impl Default for Job {
    fn default() -> Self {
        Job::new()
    }
}

impl Job {
    pub fn new() -> Job {
        let id = next_job_id();
        Job {
            id,
            name: "test".into(),
            stage: "test".into(),
            project: "group/project".into(),
            project_id: 1000,
            pipeline_id: 5000 + id % 100_000,
            image: None,
            services: Vec::new(),
            variables: Vec::new(),
            before_script: Vec::new(),
            script: vec!["true".into()],
            after_script: Vec::new(),
            get_sources_script: Vec::new(),
            cache: None,
            cache_key: "default".into(),
            artifacts: None,
            download_artifacts: false,
            release: None,
            timeout: Duration::from_secs(3600),
            cancel: None,
            abort: None,
            commit_sha: "1f0a9c3e5b7d2468ace013579bdf2468ace01357".into(),
            ref_name: "main".into(),
        }
    }
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = n.into();
        self
    }
    /// The project's path; its id (as GitLab would assign one) follows from it.
    pub fn project(mut self, slug: impl Into<String>) -> Self {
        self.project = slug.into();
        // FNV-1a: a stable id per path, so different projects get different ids.
        let hash = self.project.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        self.project_id = 1000 + hash % 1_000_000;
        self
    }
    pub fn image(mut self, i: impl Into<String>) -> Self {
        self.image = Some(i.into());
        self
    }
    pub fn service(mut self, s: impl Into<String>) -> Self {
        self.services.push(s.into());
        self
    }
    pub fn var(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.variables.push(Variable::new(k, v));
        self
    }
    pub fn masked_var(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.variables.push(Variable::new(k, v).masked());
        self
    }
    pub fn file_var(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.variables.push(Variable::new(k, v).file());
        self
    }
    pub fn variable(mut self, v: Variable) -> Self {
        self.variables.push(v);
        self
    }
    fn list<I: IntoIterator<Item = S>, S: Into<String>>(i: I) -> Vec<String> {
        i.into_iter().map(Into::into).collect()
    }
    pub fn before_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.before_script = Self::list(c);
        self
    }
    pub fn script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.script = Self::list(c);
        self
    }
    pub fn after_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.after_script = Self::list(c);
        self
    }
    /// Harness extension: commands run in the project dir at the end of `get_sources`.
    pub fn get_sources_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.get_sources_script = Self::list(c);
        self
    }
    /// `cache:` with paths, `when: on_success` (GitLab's default).
    pub fn cache(mut self, on: bool) -> Self {
        self.cache = on.then_some(When::OnSuccess);
        self
    }
    pub fn cache_when(mut self, w: When) -> Self {
        self.cache = Some(w);
        self
    }
    /// `artifacts:` with paths, `when: on_success` (GitLab's default).
    pub fn artifacts(mut self, on: bool) -> Self {
        self.artifacts = on.then_some(When::OnSuccess);
        self
    }
    pub fn artifacts_when(mut self, w: When) -> Self {
        self.artifacts = Some(w);
        self
    }
    pub fn download_artifacts(mut self, on: bool) -> Self {
        self.download_artifacts = on;
        self
    }
    /// A `release:` step (`step_release`) running these commands.
    pub fn release<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.release = Some(Self::list(c));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// GitLab "cancel requested": SIGTERM to the process group of stage `stage` (`config`,
    /// `prepare`, or a run stage name) `after` it started; SIGKILL after
    /// `graceful_kill_timeout`. During `build_script`/`step_*` only the script is cancelled:
    /// after_script, the `*_on_failure` stages and `cleanup_file_variables` still run.
    pub fn cancel_after(mut self, stage: impl Into<String>, after: Duration) -> Self {
        self.cancel = Some((stage.into(), after));
        self
    }
    /// Job abort: terminate stage `stage` `after` it started, call no further run stages,
    /// wait at most `Runner::abort_wait` for it, then cleanup.
    pub fn abort_after(mut self, stage: impl Into<String>, after: Duration) -> Self {
        self.abort = Some((stage.into(), after));
        self
    }
    pub(crate) fn job_token(&self) -> String {
        format!(
            "glcbt-64_harness{:012x}",
            self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xffff_ffff_ffff
        )
    }
}
