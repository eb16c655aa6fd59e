//! `Runner`: what `config.toml` (`[[runners]]` + `[runners.custom]`) and the gitlab-runner
//! process environment say.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The runner side: executables, args, timeouts, directories and the process environment of
/// the emulated `gitlab-runner`. Cloning shares the concurrency-slot bookkeeping
/// (`CI_CONCURRENT_ID`), as jobs of one `[[runners]]` entry do.
#[derive(Debug, Clone)]
pub struct Runner {
    /// `config_exec`; `None` skips the config stage.
    pub config_exec: Option<PathBuf>,
    pub config_args: Vec<String>,
    /// `prepare_exec`; `None` skips the prepare stage.
    pub prepare_exec: Option<PathBuf>,
    pub prepare_args: Vec<String>,
    /// `run_exec` (required).
    pub run_exec: PathBuf,
    /// Placed before `<script> <stage>`.
    pub run_args: Vec<String>,
    /// `cleanup_exec`; `None` skips cleanup.
    pub cleanup_exec: Option<PathBuf>,
    pub cleanup_args: Vec<String>,
    pub config_exec_timeout: Duration,
    pub prepare_exec_timeout: Duration,
    pub cleanup_exec_timeout: Duration,
    /// `prepare_timeout` (19.0+): bounds config + prepare + `prepare_script`. Default: the job
    /// timeout.
    pub prepare_timeout: Option<Duration>,
    /// `get_sources_timeout` (19.1+). Default: the job timeout.
    pub get_sources_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL (default 600 s).
    pub graceful_kill_timeout: Duration,
    /// Time after SIGKILL before giving up on the process (default 10 s).
    pub force_kill_timeout: Duration,
    /// How long the runner waits for a stage after an abort before going to cleanup (5 min).
    pub abort_wait: Duration,
    /// Pause between prepare attempts (runner: 3 s). **Tests may shorten it**; a deviation.
    pub prepare_retry_pause: Duration,
    /// Harness-only: how long to keep reading a stage's pipes after its process exited.
    /// gitlab-runner would wait for EOF; the harness stops and records a warning instead.
    pub output_drain_timeout: Duration,
    /// `[[runners]] builds_dir` (used when the config stage does not set it).
    pub builds_dir: Option<String>,
    /// `[[runners]] cache_dir`.
    pub cache_dir: Option<String>,
    /// `[[runners]] shell` (default bash).
    pub shell: Option<String>,
    /// `[[runners]] environment`: become job variables (`CUSTOM_ENV_*`).
    pub environment: Vec<(String, String)>,
    /// Runner authentication token (the short token is derived from it).
    pub token: String,
    pub id: u64,
    pub description: String,
    /// The machine's hostname (job metadata; `config` may override the build hostname).
    pub hostname: String,
    pub url: String,
    pub version: String,
    pub revision: String,
    /// Whether the gitlab-runner process environment is inherited from the test process.
    pub inherit_env: bool,
    /// Extra/overriding environment of the gitlab-runner process (applied after inheritance).
    pub env: Vec<(String, String)>,
    pub(crate) slots: Arc<Mutex<Vec<(u64, String, usize)>>>,
}

impl Runner {
    /// A runner whose four executables are all `driver` (args empty).
    pub fn new(driver: impl AsRef<Path>) -> Runner {
        let d = driver.as_ref().to_path_buf();
        Runner {
            config_exec: Some(d.clone()),
            config_args: Vec::new(),
            prepare_exec: Some(d.clone()),
            prepare_args: Vec::new(),
            run_exec: d.clone(),
            run_args: Vec::new(),
            cleanup_exec: Some(d),
            cleanup_args: Vec::new(),
            config_exec_timeout: Duration::from_secs(3600),
            prepare_exec_timeout: Duration::from_secs(3600),
            cleanup_exec_timeout: Duration::from_secs(3600),
            prepare_timeout: None,
            get_sources_timeout: None,
            graceful_kill_timeout: Duration::from_secs(600),
            force_kill_timeout: Duration::from_secs(10),
            abort_wait: Duration::from_secs(300),
            prepare_retry_pause: Duration::from_secs(3),
            output_drain_timeout: Duration::from_secs(5),
            builds_dir: None,
            cache_dir: None,
            shell: None,
            environment: Vec::new(),
            token: "glrt-t1_HarnessRunnerToken0123".to_string(),
            id: 42,
            description: "harness-runner".to_string(),
            hostname: "harness-host".to_string(),
            url: "https://gitlab.example.com".to_string(),
            version: "19.4.0".to_string(),
            revision: "harness".to_string(),
            inherit_env: true,
            env: Vec::new(),
            slots: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The usual layout of our driver: `driver config|prepare|run|cleanup`.
    pub fn with_subcommands(driver: impl AsRef<Path>) -> Runner {
        Runner::new(driver)
            .config_args(["config"])
            .prepare_args(["prepare"])
            .run_args(["run"])
            .cleanup_args(["cleanup"])
    }

    pub fn config_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.config_args = a.into_iter().map(Into::into).collect();
        self
    }
    pub fn prepare_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.prepare_args = a.into_iter().map(Into::into).collect();
        self
    }
    pub fn run_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.run_args = a.into_iter().map(Into::into).collect();
        self
    }
    pub fn cleanup_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.cleanup_args = a.into_iter().map(Into::into).collect();
        self
    }
    pub fn config_exec(mut self, p: Option<PathBuf>) -> Self {
        self.config_exec = p;
        self
    }
    pub fn prepare_exec(mut self, p: Option<PathBuf>) -> Self {
        self.prepare_exec = p;
        self
    }
    pub fn cleanup_exec(mut self, p: Option<PathBuf>) -> Self {
        self.cleanup_exec = p;
        self
    }
    /// Add one variable to the gitlab-runner process environment.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Add several variables (e.g. `SimHost::env()`).
    pub fn envs<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(
        mut self,
        e: I,
    ) -> Self {
        self.env
            .extend(e.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
    /// Don't inherit the test process environment (only `env` entries are passed).
    pub fn clean_env(mut self) -> Self {
        self.inherit_env = false;
        self
    }
    pub fn graceful_kill_timeout(mut self, d: Duration) -> Self {
        self.graceful_kill_timeout = d;
        self
    }
    pub fn force_kill_timeout(mut self, d: Duration) -> Self {
        self.force_kill_timeout = d;
        self
    }
    pub fn abort_wait(mut self, d: Duration) -> Self {
        self.abort_wait = d;
        self
    }
    /// Deviation from gitlab-runner (fixed 3 s) to keep tests fast.
    pub fn prepare_retry_pause(mut self, d: Duration) -> Self {
        self.prepare_retry_pause = d;
        self
    }
    /// Harness-only: how long to keep reading a stage's pipes after its process exited.
    pub fn output_drain_timeout(mut self, d: Duration) -> Self {
        self.output_drain_timeout = d;
        self
    }
    pub fn builds_dir(mut self, d: impl Into<String>) -> Self {
        self.builds_dir = Some(d.into());
        self
    }
    pub fn cache_dir(mut self, d: impl Into<String>) -> Self {
        self.cache_dir = Some(d.into());
        self
    }
    pub fn shell(mut self, s: impl Into<String>) -> Self {
        self.shell = Some(s.into());
        self
    }
    pub fn environment(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.environment.push((k.into(), v.into()));
        self
    }
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = t.into();
        self
    }
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }
    pub fn hostname(mut self, h: impl Into<String>) -> Self {
        self.hostname = h.into();
        self
    }

    /// The short token as gitlab-runner computes it: for `glrt-` tokens, the 9 characters after
    /// the prefix (`t1_` partition prefixes included); otherwise the first 8.
    pub fn short_token(&self) -> String {
        let t = self.token.as_str();
        if let Some(rest) = t.strip_prefix("glrt-") {
            rest.chars().take(9).collect()
        } else {
            t.chars().take(8).collect()
        }
    }

    /// The environment of the emulated gitlab-runner process.
    pub(crate) fn process_env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = if self.inherit_env {
            std::env::vars().collect()
        } else {
            Vec::new()
        };
        v.extend(self.env.iter().cloned());
        v
    }

    /// Take the lowest free concurrency slot (CI_CONCURRENT_ID) and project slot.
    pub(crate) fn take_slots(&self, job_id: u64, project: &str) -> (usize, usize) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let used: BTreeSet<usize> = (0..s.len()).filter(|&i| s[i].0 != 0).collect();
        let id = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        let proj_used: BTreeSet<usize> = s
            .iter()
            .filter(|e| e.0 != 0 && e.1 == project)
            .map(|e| e.2)
            .collect();
        let pid = (0..).find(|i| !proj_used.contains(i)).unwrap_or(0);
        let entry = (job_id, project.to_string(), pid);
        if id < s.len() {
            s[id] = entry;
        } else {
            s.push(entry);
        }
        (id, pid)
    }

    pub(crate) fn release_slots(&self, job_id: u64) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for e in s.iter_mut() {
            if e.0 == job_id {
                e.0 = 0;
            }
        }
    }
}
