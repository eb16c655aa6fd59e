//! `run_job`: the call sequence of gitlab-runner's custom executor (spec §2–§6).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::job::{Job, Variable, When};
use crate::process::{self, Stream, Termination};
use crate::runner::Runner;
use crate::script::{self, ScriptForm};

/// `driver` of the config-stage JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    pub name: Option<String>,
    pub version: Option<String>,
}

/// The config-stage JSON (`api.ConfigExecOutput`). Unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOutput {
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub builds_dir_is_shared: Option<bool>,
    pub hostname: Option<String>,
    pub driver: Option<DriverInfo>,
    pub job_env: Option<BTreeMap<String, String>>,
    pub shell: Option<String>,
}

impl ConfigOutput {
    /// Parse config stdout strictly: empty is fine; otherwise exactly one JSON object
    /// (surrounding whitespace allowed, as Go's decoder does).
    pub fn parse(stdout: &[u8]) -> Result<ConfigOutput, String> {
        if stdout.is_empty() {
            return Ok(ConfigOutput::default());
        }
        let v: serde_json::Value = serde_json::from_slice(stdout)
            .map_err(|e| format!("error while parsing JSON output: {e}"))?;
        if !v.is_object() {
            return Err("error while parsing JSON output: not a JSON object".into());
        }
        serde_json::from_value(v).map_err(|e| format!("error while parsing JSON output: {e}"))
    }
}

/// Final job state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// `script_failure`; `exit_code` from `BUILD_EXIT_CODE_FILE` (1 if absent).
    BuildFailure {
        exit_code: i32,
    },
    /// `runner_system_failure`, unknown failures, configuration errors.
    SystemFailure {
        message: String,
    },
    Canceled,
    TimedOut,
}

/// Result of one driver call, by the rules of spec §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageResult {
    Success,
    BuildFailure { exit_code: i32 },
    SystemFailure { message: String },
}

impl StageResult {
    pub fn is_success(&self) -> bool {
        matches!(self, StageResult::Success)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Config,
    Prepare,
    Run,
    Cleanup,
}

/// One driver invocation.
#[derive(Debug, Clone)]
pub struct StageRecord {
    /// `config`, `prepare`, `cleanup`, or the run stage name.
    pub name: String,
    pub kind: StageKind,
    /// Prepare attempt this call belongs to (1-based).
    pub attempt: u32,
    pub argv: Vec<String>,
    pub pid: Option<u32>,
    /// Exit code (`-1` for a signal), `None` if not started or given up on.
    pub exit_code: Option<i32>,
    /// `exit status N`, `signal: killed`, ...
    pub status_text: String,
    pub result: StageResult,
    pub terminated: Option<Termination>,
    pub sigkilled: bool,
    pub gave_up: bool,
    pub pipes_held_open: bool,
    /// Offset from the job start.
    pub started: Duration,
    pub duration: Duration,
    pub stdout: String,
    pub stderr: String,
    /// The script file handed to run_exec and its content.
    pub script_path: Option<PathBuf>,
    pub script: Option<String>,
    /// The per-attempt temp dir (cwd, TMPDIR).
    pub tmpdir: PathBuf,
}

/// Everything `run_job` observed.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job_id: u64,
    /// The job log as GitLab would show it (masked).
    pub log: String,
    /// What goes to the runner's own log (cleanup output, warnings).
    pub runner_log: String,
    pub verdict: Verdict,
    /// config, prepare and run stage calls, in order (cleanup calls are in `cleanups`).
    pub stages: Vec<StageRecord>,
    pub cleanups: Vec<StageRecord>,
    pub prepare_attempts: u32,
    /// The parsed config-stage output of the last attempt that produced one.
    pub config: Option<ConfigOutput>,
    /// Per-attempt temp dirs (all deleted by the end).
    pub tmpdirs: Vec<PathBuf>,
    pub project_dir: Option<String>,
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub concurrent_id: usize,
    /// Harness observations (pipes held open, processes given up on, ...).
    pub warnings: Vec<String>,
    pub aborted: bool,
    pub duration: Duration,
}

impl JobOutcome {
    /// Names of the run stages called, in order.
    pub fn run_stage_names(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| s.kind == StageKind::Run)
            .map(|s| s.name.as_str())
            .collect()
    }
    /// All driver calls (config/prepare/run/cleanup) in call order, as `name` strings.
    pub fn call_sequence(&self) -> Vec<String> {
        let mut all: Vec<&StageRecord> = self.stages.iter().chain(self.cleanups.iter()).collect();
        all.sort_by_key(|s| s.started);
        all.into_iter().map(|s| s.name.clone()).collect()
    }
    /// The last call of stage `name`.
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages
            .iter()
            .chain(self.cleanups.iter())
            .rev()
            .find(|s| s.name == name)
    }
    pub fn stage_durations(&self) -> Vec<(String, Duration)> {
        self.stages
            .iter()
            .map(|s| (s.name.clone(), s.duration))
            .collect()
    }
    fn dump(&self) -> String {
        let mut s = format!(
            "verdict: {:?}\ncalls: {:?}\n",
            self.verdict,
            self.call_sequence()
        );
        let _ = writeln!(
            s,
            "----- job log -----\n{}\n----- runner log -----\n{}",
            self.log, self.runner_log
        );
        for w in &self.warnings {
            let _ = writeln!(s, "harness warning: {w}");
        }
        s
    }
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert_eq!(
            self.verdict,
            Verdict::Success,
            "job did not succeed\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn assert_build_failure(&self, exit_code: i32) -> &Self {
        assert_eq!(
            self.verdict,
            Verdict::BuildFailure { exit_code },
            "\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn assert_system_failure(&self) -> &Self {
        assert!(
            matches!(self.verdict, Verdict::SystemFailure { .. }),
            "expected a system failure\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn assert_verdict(&self, v: Verdict) -> &Self {
        assert_eq!(self.verdict, v, "\n{}", self.dump());
        self
    }
    #[track_caller]
    pub fn assert_log_contains(&self, needle: &str) -> &Self {
        assert!(
            self.log.contains(needle),
            "job log lacks {needle:?}\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn assert_run_stages(&self, expected: &[&str]) -> &Self {
        assert_eq!(self.run_stage_names(), expected, "\n{}", self.dump());
        self
    }
    /// Panics (printing everything) unless cleanup ran and there are no harness warnings.
    #[track_caller]
    pub fn assert_clean(&self) -> &Self {
        assert!(
            !self.cleanups.is_empty(),
            "cleanup never ran\n{}",
            self.dump()
        );
        assert!(
            self.warnings.is_empty(),
            "harness warnings\n{}",
            self.dump()
        );
        self
    }
}

/// Directories computed after the config stage (spec §2.2).
#[derive(Debug, Clone)]
struct Dirs {
    builds_dir: String,
    cache_dir: String,
    project_dir: String,
    tmp_project_dir: String,
}

enum PrepError {
    /// Exit 1: not retried.
    Build(i32),
    /// ConfigurationError: not retried.
    Config(String),
    /// Retriable.
    System(String),
    /// Job timeout / cancel / abort during prepare: not retried.
    Halt(Verdict),
}

struct State<'a> {
    runner: &'a Runner,
    job: &'a Job,
    out: JobOutcome,
    start: Instant,
    deadline: Instant,
    tmp: PathBuf,
    attempt: u32,
    config: ConfigOutput,
    dirs: Option<Dirs>,
    status: &'static str,
    cid: usize,
    cpid: usize,
    cancel_fired: bool,
    abort_fired: bool,
}

/// Run `job` with `runner` exactly as gitlab-runner 19.x would, and report what happened.
pub fn run_job(runner: &Runner, job: &Job) -> JobOutcome {
    let (cid, cpid) = runner.take_slots(job.id, &job.project);
    let start = Instant::now();
    let mut st = State {
        runner,
        job,
        out: JobOutcome {
            job_id: job.id,
            log: String::new(),
            runner_log: String::new(),
            verdict: Verdict::Success,
            stages: Vec::new(),
            cleanups: Vec::new(),
            prepare_attempts: 0,
            config: None,
            tmpdirs: Vec::new(),
            project_dir: None,
            builds_dir: None,
            cache_dir: None,
            concurrent_id: cid,
            warnings: Vec::new(),
            aborted: false,
            duration: Duration::ZERO,
        },
        start,
        deadline: start + job.timeout,
        tmp: PathBuf::new(),
        attempt: 0,
        config: ConfigOutput::default(),
        dirs: None,
        status: "running",
        cid,
        cpid,
        cancel_fired: false,
        abort_fired: false,
    };
    st.line(&format!(
        "Running with gitlab-runner {} ({})",
        runner.version, runner.revision
    ));
    st.line(&format!(
        "  on {} {}, system ID: s_harness",
        runner.description,
        runner.short_token()
    ));
    st.line("Preparing the \"custom\" executor");

    let verdict = loop {
        st.attempt += 1;
        st.out.prepare_attempts = st.attempt;
        match st.prepare_attempt() {
            Ok(()) => break st.run_phase(),
            Err(e) => {
                let (verdict, retry) = match e {
                    PrepError::Build(code) => (Verdict::BuildFailure { exit_code: code }, false),
                    PrepError::Config(m) => (Verdict::SystemFailure { message: m }, false),
                    PrepError::System(m) => (
                        Verdict::SystemFailure {
                            message: format!("prepare environment: {m}"),
                        },
                        st.attempt < 3,
                    ),
                    PrepError::Halt(v) => (v, false),
                };
                if retry {
                    if let Verdict::SystemFailure { message } = &verdict {
                        st.line(&format!("ERROR: Preparation failed: {message}"));
                    }
                    st.line(&format!(
                        "Will be retried in {} ...",
                        go_duration(runner.prepare_retry_pause)
                    ));
                    st.cleanup();
                    std::thread::sleep(runner.prepare_retry_pause);
                    continue;
                }
                st.status = match &verdict {
                    Verdict::Canceled => "canceled",
                    Verdict::TimedOut => "timedout",
                    _ => "failed",
                };
                st.cleanup();
                break verdict;
            }
        }
    };
    match &verdict {
        Verdict::Success => st.line("Job succeeded"),
        Verdict::BuildFailure { exit_code } => {
            st.line(&format!("ERROR: Job failed: exit status {exit_code}"))
        }
        Verdict::SystemFailure { message } => {
            st.line(&format!("ERROR: Job failed (system failure): {message}"))
        }
        Verdict::Canceled => st.line("ERROR: Job failed: canceled"),
        Verdict::TimedOut => st.line(&format!(
            "ERROR: Job failed: execution took longer than {} seconds",
            go_duration(job.timeout)
        )),
    }
    st.out.verdict = verdict;
    runner.release_slots(job.id);
    // masking
    let mut masks: Vec<String> = job
        .variables
        .iter()
        .filter(|v| v.masked && v.value.len() >= 8)
        .map(|v| v.value.clone())
        .collect();
    masks.push(job.job_token());
    for m in masks {
        st.out.log = st.out.log.replace(&m, "[MASKED]");
    }
    st.out.duration = start.elapsed();
    st.out
}

impl State<'_> {
    fn line(&mut self, s: &str) {
        if !self.out.log.is_empty() && !self.out.log.ends_with('\n') {
            self.out.log.push('\n');
        }
        self.out.log.push_str(s);
        self.out.log.push('\n');
    }

    fn warn(&mut self, s: String) {
        self.out.runner_log.push_str(&format!("WARNING: {s}\n"));
        self.out.warnings.push(s);
    }

    /// One prepare attempt: fresh tmp dir, response.json, config, dirs, prepare.
    fn prepare_attempt(&mut self) -> Result<(), PrepError> {
        let tmp = tempfile::Builder::new()
            .prefix("custom-executor")
            .tempdir()
            .map_err(|e| PrepError::System(format!("creating temp dir: {e}")))?
            .keep();
        self.tmp = tmp.clone();
        self.out.tmpdirs.push(tmp.clone());
        self.config = ConfigOutput::default();
        self.dirs = None;
        let resp = tmp.join("response.json");
        let payload = serde_json::to_vec_pretty(&self.payload()).expect("payload");
        std::fs::write(&resp, payload).map_err(|e| PrepError::System(e.to_string()))?;
        let _ = std::fs::set_permissions(&resp, std::fs::Permissions::from_mode(0o600));

        let prep_deadline = self
            .runner
            .prepare_timeout
            .map(|t| self.start + t)
            .unwrap_or(self.deadline)
            .min(self.deadline);
        if let Some(exec) = self.runner.config_exec.clone() {
            let d = (Instant::now() + self.runner.config_exec_timeout).min(prep_deadline);
            let args = self.runner.config_args.clone();
            let rec = self.spawn("config", StageKind::Config, &exec, &args, d, None);
            self.prep_check(&rec, prep_deadline)?;
            match ConfigOutput::parse(rec.stdout.as_bytes()) {
                Ok(c) => {
                    self.config = c.clone();
                    self.out.config = Some(c);
                }
                Err(e) => return Err(PrepError::System(e)),
            }
        }
        let using = match &self.config.driver {
            Some(DriverInfo {
                name: Some(n),
                version,
            }) => {
                format!(
                    "Using Custom executor with driver {n} {}...",
                    version.clone().unwrap_or_default()
                )
            }
            _ => "Using Custom executor...".to_string(),
        };
        self.line(&using);

        // directories
        let builds = self
            .config
            .builds_dir
            .clone()
            .or_else(|| self.runner.builds_dir.clone())
            .unwrap_or_default();
        if builds.is_empty() {
            return Err(PrepError::Config("the builds_dir is not configured".into()));
        }
        let cache = self
            .config
            .cache_dir
            .clone()
            .or_else(|| self.runner.cache_dir.clone())
            .unwrap_or_default();
        if cache.is_empty() {
            return Err(PrepError::Config("the cache_dir is not configured".into()));
        }
        let shell = self
            .config
            .shell
            .clone()
            .or_else(|| self.runner.shell.clone())
            .unwrap_or_else(|| "bash".into());
        if shell != "bash" {
            return Err(PrepError::Config(format!(
                "harness: shell {shell:?} is not supported (bash only)"
            )));
        }
        let b = builds.trim_end_matches('/');
        let project_dir = if self.config.builds_dir_is_shared.unwrap_or(false) {
            format!(
                "{b}/{}/{}/{}",
                self.runner.short_token(),
                self.cpid,
                self.job.project
            )
        } else {
            format!("{b}/{}", self.job.project)
        };
        let dirs = Dirs {
            builds_dir: builds.clone(),
            cache_dir: cache.clone(),
            tmp_project_dir: format!("{project_dir}.tmp"),
            project_dir: project_dir.clone(),
        };
        self.out.project_dir = Some(project_dir);
        self.out.builds_dir = Some(builds);
        self.out.cache_dir = Some(cache);
        self.dirs = Some(dirs);

        if let Some(exec) = self.runner.prepare_exec.clone() {
            let d = (Instant::now() + self.runner.prepare_exec_timeout).min(prep_deadline);
            let args = self.runner.prepare_args.clone();
            let rec = self.spawn("prepare", StageKind::Prepare, &exec, &args, d, None);
            self.prep_check(&rec, prep_deadline)?;
        }
        Ok(())
    }

    fn prep_check(&mut self, rec: &StageRecord, prep_deadline: Instant) -> Result<(), PrepError> {
        match rec.terminated {
            Some(Termination::Abort) => return Err(PrepError::Halt(Verdict::Canceled)),
            Some(Termination::Cancel) => return Err(PrepError::Halt(Verdict::Canceled)),
            Some(Termination::Timeout) if Instant::now() >= prep_deadline => {
                return Err(PrepError::Halt(if Instant::now() >= self.deadline {
                    Verdict::TimedOut
                } else {
                    Verdict::SystemFailure {
                        message: "prepare environment: prepare timeout exceeded".into(),
                    }
                }))
            }
            _ => {}
        }
        match &rec.result {
            StageResult::Success => Ok(()),
            StageResult::BuildFailure { exit_code } => Err(PrepError::Build(*exit_code)),
            StageResult::SystemFailure { message } => Err(PrepError::System(message.clone())),
        }
    }

    fn cleanup(&mut self) {
        if let Some(exec) = self.runner.cleanup_exec.clone() {
            let d = Instant::now() + self.runner.cleanup_exec_timeout;
            let args = self.runner.cleanup_args.clone();
            let rec = self.spawn("cleanup", StageKind::Cleanup, &exec, &args, d, None);
            if !rec.stdout.is_empty() {
                self.out
                    .runner_log
                    .push_str(&format!("DEBUG: cleanup stdout: {}\n", rec.stdout));
            }
            if !rec.stderr.is_empty() {
                self.out
                    .runner_log
                    .push_str(&format!("WARNING: cleanup stderr: {}\n", rec.stderr));
            }
            if let StageResult::BuildFailure { exit_code } = &rec.result {
                self.warn(format!("Cleanup script failed: exit status {exit_code}"));
            } else if let StageResult::SystemFailure { message } = &rec.result {
                self.warn(format!("Cleanup script failed: {message}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }

    /// Spawn one driver call and record it.
    fn spawn(
        &mut self,
        name: &str,
        kind: StageKind,
        program: &Path,
        args: &[String],
        deadline: Instant,
        script: Option<(PathBuf, String)>,
    ) -> StageRecord {
        let env = self.stage_env(kind);
        let mut trigger = None;
        if kind != StageKind::Cleanup {
            if let Some((s, d)) = &self.job.cancel {
                if s == name && !self.cancel_fired {
                    trigger = Some((*d, Termination::Cancel));
                }
            }
            if let Some((s, d)) = &self.job.abort {
                if s == name && !self.abort_fired {
                    trigger = Some((*d, Termination::Abort));
                }
            }
        }
        let ctl = process::Control {
            deadline: Some(deadline),
            trigger_after: trigger,
            graceful: self.runner.graceful_kill_timeout,
            force: self.runner.force_kill_timeout,
            abort_wait: self.runner.abort_wait,
            drain: self.runner.output_drain_timeout,
        };
        let spec = process::Spec {
            program,
            args,
            cwd: &self.tmp,
            env: &env,
        };
        let started = self.start.elapsed();
        let to_log_stdout = matches!(kind, StageKind::Prepare | StageKind::Run);
        let to_log_stderr = kind != StageKind::Cleanup;
        let log = &mut self.out.log;
        let mut on_out = |s: Stream, d: &[u8]| {
            if (s == Stream::Stdout && to_log_stdout) || (s == Stream::Stderr && to_log_stderr) {
                log.push_str(&String::from_utf8_lossy(d));
            }
        };
        let pr = process::run(&spec, &ctl, &mut on_out);
        if !self.out.log.is_empty() && !self.out.log.ends_with('\n') {
            self.out.log.push('\n');
        }
        match pr.terminated {
            Some(Termination::Cancel) => self.cancel_fired = true,
            Some(Termination::Abort) => {
                self.abort_fired = true;
                self.out.aborted = true;
            }
            _ => {}
        }
        let result = if let Some(e) = &pr.spawn_error {
            StageResult::SystemFailure {
                message: format!("failed to start process: {e}"),
            }
        } else if pr.gave_up {
            StageResult::SystemFailure {
                message: format!(
                    "failed to kill process PID={}, likely process is dormant",
                    pr.pid.unwrap_or(0)
                ),
            }
        } else {
            classify(
                pr.status.as_ref().expect("status"),
                &self.tmp.join("build_exit_code"),
            )
        };
        if pr.pipes_held_open {
            self.warn(format!(
                "{name}: stdout/stderr still open {:?} after the driver process exited (a child kept them; gitlab-runner would keep waiting)",
                self.runner.output_drain_timeout
            ));
        }
        if pr.gave_up {
            self.warn(format!(
                "{name}: gave up waiting for PID {}",
                pr.pid.unwrap_or(0)
            ));
        }
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());
        let rec = StageRecord {
            name: name.to_string(),
            kind,
            attempt: self.attempt,
            argv,
            pid: pr.pid,
            exit_code: pr.status.as_ref().map(process::exit_code),
            status_text: pr
                .status
                .as_ref()
                .map(process::describe)
                .unwrap_or_default(),
            result,
            terminated: pr.terminated,
            sigkilled: pr.sigkilled,
            gave_up: pr.gave_up,
            pipes_held_open: pr.pipes_held_open,
            started,
            duration: pr.duration,
            stdout: String::from_utf8_lossy(&pr.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&pr.stderr).into_owned(),
            script_path: script.as_ref().map(|s| s.0.clone()),
            script: script.map(|s| s.1),
            tmpdir: self.tmp.clone(),
        };
        if kind == StageKind::Cleanup {
            self.out.cleanups.push(rec.clone());
        } else {
            self.out.stages.push(rec.clone());
        }
        rec
    }

    /// The environment of a driver call (spec §3).
    fn stage_env(&self, kind: StageKind) -> Vec<(String, String)> {
        let mut env = self.runner.process_env();
        let tmp = self.tmp.display().to_string();
        env.push(("TMPDIR".into(), tmp.clone()));
        env.push(("BUILD_FAILURE_EXIT_CODE".into(), "1".into()));
        env.push(("SYSTEM_FAILURE_EXIT_CODE".into(), "2".into()));
        env.push((
            "BUILD_EXIT_CODE_FILE".into(),
            format!("{tmp}/build_exit_code"),
        ));
        env.push(("JOB_RESPONSE_FILE".into(), format!("{tmp}/response.json")));
        if kind != StageKind::Config {
            if let Some(je) = &self.config.job_env {
                env.extend(je.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        for v in self.all_variables() {
            env.push((format!("CUSTOM_ENV_{}", v.key), v.value));
        }
        let services = if self.job.services.is_empty() {
            String::new()
        } else {
            let arr: Vec<serde_json::Value> = self
                .job
                .services
                .iter()
                .map(|s| serde_json::json!({"name": s, "alias": "", "entrypoint": null, "command": null}))
                .collect();
            serde_json::Value::Array(arr).to_string()
        };
        env.push(("CUSTOM_ENV_CI_JOB_SERVICES".into(), services));
        env
    }

    fn server_host(&self) -> String {
        self.runner
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// The variables GitLab sends (the payload's `variables`), user variables last.
    fn payload_variables(&self) -> Vec<Variable> {
        let j = self.job;
        let r = self.runner;
        let host = self.server_host();
        let token = j.job_token();
        let ns = j.project.rsplit_once('/').map(|(a, _)| a).unwrap_or("");
        let pname = j.project.rsplit('/').next().unwrap_or(&j.project);
        let slug: String = j
            .project
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let v = |k: &str, val: String| Variable::new(k, val);
        let mut vars = vec![
            v("CI_PIPELINE_ID", j.pipeline_id.to_string()),
            v("CI_PIPELINE_IID", (j.pipeline_id % 1000).to_string()),
            v("CI_PIPELINE_SOURCE", "push".into()),
            v(
                "CI_PIPELINE_URL",
                format!("{}/{}/-/pipelines/{}", r.url, j.project, j.pipeline_id),
            ),
            v("CI_JOB_ID", j.id.to_string()),
            v(
                "CI_JOB_URL",
                format!("{}/{}/-/jobs/{}", r.url, j.project, j.id),
            ),
            v("CI_JOB_NAME", j.name.clone()),
            v("CI_JOB_NAME_SLUG", j.name.to_lowercase()),
            v("CI_JOB_STAGE", j.stage.clone()),
            v("CI_JOB_STARTED_AT", "2026-01-01T00:00:00Z".into()),
            Variable::new("CI_JOB_TOKEN", token.clone()).masked(),
            v("CI_NODE_TOTAL", "1".into()),
            v("CI_BUILDS_DIR_PLACEHOLDER", String::new()),
            v("CI_PROJECT_ID", j.project_id.to_string()),
            v("CI_PROJECT_NAME", pname.to_string()),
            v("CI_PROJECT_TITLE", pname.to_string()),
            v("CI_PROJECT_PATH", j.project.clone()),
            v("CI_PROJECT_PATH_SLUG", slug),
            v("CI_PROJECT_NAMESPACE", ns.to_string()),
            v(
                "CI_PROJECT_ROOT_NAMESPACE",
                ns.split('/').next().unwrap_or("").to_string(),
            ),
            v("CI_PROJECT_URL", format!("{}/{}", r.url, j.project)),
            v("CI_PROJECT_VISIBILITY", "private".into()),
            v("CI_DEFAULT_BRANCH", "main".into()),
            v("CI_CONFIG_PATH", ".gitlab-ci.yml".into()),
            v("CI_COMMIT_SHA", j.commit_sha.clone()),
            v("CI_COMMIT_SHORT_SHA", j.commit_sha[..8].to_string()),
            v("CI_COMMIT_REF_NAME", j.ref_name.clone()),
            v("CI_COMMIT_REF_SLUG", j.ref_name.clone()),
            v("CI_COMMIT_BRANCH", j.ref_name.clone()),
            v(
                "CI_COMMIT_BEFORE_SHA",
                "0000000000000000000000000000000000000000".into(),
            ),
            v("CI_COMMIT_MESSAGE", "harness commit\n".into()),
            v("CI_COMMIT_TITLE", "harness commit".into()),
            v("CI_RUNNER_ID", r.id.to_string()),
            v("CI_RUNNER_DESCRIPTION", r.description.clone()),
            v("CI_RUNNER_TAGS", "[\"tart\"]".into()),
            v(
                "CI_REPOSITORY_URL",
                format!("https://gitlab-ci-token:{token}@{host}/{}.git", j.project),
            ),
            v("CI_SERVER_URL", r.url.clone()),
            v("CI_SERVER_HOST", host.clone()),
            v("CI_SERVER_PORT", "443".into()),
            v("CI_SERVER_PROTOCOL", "https".into()),
            v("CI_SERVER_NAME", "GitLab".into()),
            v("CI_SERVER_VERSION", "18.6.0".into()),
            v("CI_API_V4_URL", format!("{}/api/v4", r.url)),
            v("CI_REGISTRY", format!("registry.{host}")),
            v(
                "CI_REGISTRY_IMAGE",
                format!("registry.{host}/{}", j.project),
            ),
            v("CI_REGISTRY_USER", "gitlab-ci-token".into()),
            Variable::new("CI_REGISTRY_PASSWORD", token.clone()).masked(),
            v("CI_DEPENDENCY_PROXY_SERVER", format!("{host}:443")),
            v("CI_DEPENDENCY_PROXY_USER", "gitlab-ci-token".into()),
            Variable::new("CI_DEPENDENCY_PROXY_PASSWORD", token).masked(),
            v("GITLAB_CI", "true".into()),
            v("CI", "true".into()),
            v("GITLAB_USER_ID", "1".into()),
            v("GITLAB_USER_LOGIN", "harness".into()),
            v("GITLAB_USER_EMAIL", "harness@example.com".into()),
            v("GITLAB_FEATURES", String::new()),
        ];
        vars.retain(|v| v.key != "CI_BUILDS_DIR_PLACEHOLDER");
        vars.extend(j.variables.iter().cloned());
        vars
    }

    /// Every build variable, as `CUSTOM_ENV_*` gets them: runner-added first, then the payload
    /// (user variables last, so they win), all expanded unless `raw`.
    fn all_variables(&self) -> Vec<Variable> {
        let r = self.runner;
        let j = self.job;
        let mut vars: Vec<Variable> = Vec::new();
        let mut user_ff: HashMap<&str, &str> = HashMap::new();
        for v in &j.variables {
            if v.key.starts_with("FF_") {
                user_ff.insert(&v.key, &v.value);
            }
        }
        for (k, d) in FEATURE_FLAGS {
            vars.push(Variable::new(*k, if *d { "true" } else { "false" }));
        }
        vars.push(Variable::new("CI_RUNNER_SHORT_TOKEN", r.short_token()));
        for (k, v) in &r.environment {
            vars.push(Variable::new(k.clone(), v.clone()));
        }
        if let Some(img) = &j.image {
            vars.push(Variable::new("CI_JOB_IMAGE", img.clone()));
        }
        let (builds, project, tmpdir) = match &self.dirs {
            Some(d) => (
                d.builds_dir.clone(),
                d.project_dir.clone(),
                d.tmp_project_dir.clone(),
            ),
            None => {
                let b = r.builds_dir.clone().unwrap_or_default();
                let p = if b.is_empty() {
                    String::new()
                } else {
                    format!("{}/{}", b.trim_end_matches('/'), j.project)
                };
                let t = if p.is_empty() {
                    String::new()
                } else {
                    format!("{p}.tmp")
                };
                (b, p, t)
            }
        };
        vars.push(Variable::new("CI_BUILDS_DIR", builds));
        vars.push(Variable::new("CI_PROJECT_DIR", project));
        vars.push(Variable::new("CI_CONCURRENT_ID", self.cid.to_string()));
        vars.push(Variable::new(
            "CI_CONCURRENT_PROJECT_ID",
            self.cpid.to_string(),
        ));
        vars.push(Variable::new("CI_SERVER", "yes"));
        vars.push(Variable::new(
            "CI_JOB_TIMEOUT",
            j.timeout.as_secs().to_string(),
        ));
        vars.push(Variable::new("CI_JOB_STATUS", self.status));
        vars.push(Variable::new("CI_SHARED_ENVIRONMENT", "true"));
        vars.push(Variable::new("CI_RUNNER_VERSION", r.version.clone()));
        vars.push(Variable::new("CI_RUNNER_REVISION", r.revision.clone()));
        vars.push(Variable::new("CI_RUNNER_EXECUTABLE_ARCH", "linux/amd64"));
        vars.push(Variable::new("RUNNER_TEMP_PROJECT_DIR", tmpdir));
        vars.extend(self.payload_variables());
        expand_all(&mut vars);
        vars
    }

    fn payload(&self) -> serde_json::Value {
        let j = self.job;
        let vars: Vec<serde_json::Value> = self
            .payload_variables()
            .iter()
            .map(|v| serde_json::json!({"key": v.key, "value": v.value, "public": v.public, "file": v.file, "masked": v.masked, "raw": v.raw}))
            .collect();
        let secs = j.timeout.as_secs();
        let mut steps = vec![serde_json::json!({
            "name": "script",
            "script": j.before_script.iter().chain(j.script.iter()).collect::<Vec<_>>(),
            "timeout": secs, "when": "on_success", "allow_failure": false
        })];
        if let Some(rel) = &j.release {
            steps.push(serde_json::json!({"name": "release", "script": rel, "timeout": secs, "when": "on_success", "allow_failure": false}));
        }
        if !j.after_script.is_empty() {
            steps.push(serde_json::json!({"name": "after_script", "script": j.after_script, "timeout": secs, "when": "always", "allow_failure": true}));
        }
        let image = match &j.image {
            Some(i) => {
                serde_json::json!({"name": i, "alias": "", "entrypoint": null, "command": null, "ports": [], "variables": [], "pull_policy": null, "executor_opts": {}})
            }
            None => serde_json::json!({"name": ""}),
        };
        let services: Vec<serde_json::Value> =
            j.services.iter().map(|s| serde_json::json!({"name": s, "alias": "", "entrypoint": null, "command": null})).collect();
        let artifacts = match j.artifacts {
            Some(w) => {
                serde_json::json!([{"name": "", "untracked": false, "paths": ["out/"], "exclude": [], "when": w.as_str(), "artifact_type": "archive", "artifact_format": "zip", "expire_in": ""}])
            }
            None => serde_json::json!([]),
        };
        let cache = match j.cache {
            Some(w) => {
                serde_json::json!([{"key": j.cache_key, "untracked": false, "policy": "pull-push", "paths": ["vendor/"], "when": w.as_str(), "fallback_keys": []}])
            }
            None => serde_json::json!([]),
        };
        let dependencies = if j.download_artifacts {
            serde_json::json!([{"id": j.id - 1, "token": "glcbt-dependency", "name": "build", "artifacts_file": {"filename": "artifacts.zip", "size": 1234}}])
        } else {
            serde_json::json!([])
        };
        let pname = j.project.rsplit('/').next().unwrap_or(&j.project);
        serde_json::json!({
            "id": j.id,
            "token": j.job_token(),
            "allow_git_fetch": true,
            "job_info": {"id": j.id, "name": j.name, "stage": j.stage, "pipeline_id": j.pipeline_id, "project_id": j.project_id, "project_name": pname, "project_full_path": j.project, "time_in_queue_seconds": 0.5, "project_jobs_running_on_instance_runners_count": "0"},
            "git_info": {"repo_url": format!("https://gitlab-ci-token:{}@{}/{}.git", j.job_token(), self.server_host(), j.project), "repo_object_format": "sha1", "ref": j.ref_name, "sha": j.commit_sha, "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch", "refspecs": [format!("+refs/heads/{0}:refs/remotes/origin/{0}", j.ref_name)], "depth": 20},
            "runner_info": {"timeout": secs, "runner_session_url": ""},
            "variables": vars,
            "steps": steps,
            "image": image,
            "services": services,
            "artifacts": artifacts,
            "cache": cache,
            "credentials": [{"type": "registry", "url": format!("registry.{}", self.server_host()), "username": "gitlab-ci-token", "password": j.job_token()}],
            "dependencies": dependencies,
            "features": {"trace_sections": true, "failure_reasons": ["script_failure", "runner_system_failure"]},
            "secrets": {},
            "hooks": [],
            "run": "",
            "policy_options": {},
            "suspend_options": {},
            "inputs": []
        })
    }

    // ----- run phase -----------------------------------------------------------------------

    /// Write a script for `stage` and call run_exec. Returns the record, or `Err(verdict)` when
    /// the job must stop at once (job timeout, abort, whole-job cancel).
    fn run_stage(
        &mut self,
        stage: &str,
        stage_deadline: Option<Instant>,
    ) -> Result<StageRecord, Verdict> {
        let body = self.stage_body(stage);
        let form = if self.flag("FF_USE_LEGACY_BASH_EVAL") {
            ScriptForm::Legacy
        } else {
            ScriptForm::V19
        };
        let content = script::wrap(&body, form, self.flag("CI_DEBUG_TRACE"));
        let path = match write_script(&self.tmp, &content) {
            Ok(p) => p,
            Err(e) => {
                return Err(Verdict::SystemFailure {
                    message: format!("writing script: {e}"),
                })
            }
        };
        let mut args = self.runner.run_args.clone();
        args.push(path.display().to_string());
        args.push(stage.to_string());
        let exec = self.runner.run_exec.clone();
        let deadline = stage_deadline
            .map(|d| d.min(self.deadline))
            .unwrap_or(self.deadline);
        let rec = self.spawn(
            stage,
            StageKind::Run,
            &exec,
            &args,
            deadline,
            Some((path, content)),
        );
        match rec.terminated {
            Some(Termination::Abort) => return Err(Verdict::Canceled),
            Some(Termination::Timeout) if Instant::now() >= self.deadline => {
                return Err(Verdict::TimedOut)
            }
            Some(Termination::Cancel)
                if !(stage == "build_script" || stage.starts_with("step_")) =>
            {
                return Err(Verdict::Canceled)
            }
            _ => {}
        }
        Ok(rec)
    }

    fn flag(&self, key: &str) -> bool {
        self.job
            .variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .is_some_and(|v| v.value == "true" || v.value == "1")
    }

    fn attempts(&self, key: &str) -> u32 {
        self.job
            .variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .and_then(|v| v.value.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .clamp(1, 10)
    }

    fn section(&mut self, stage: &str) {
        let title = match stage {
            "prepare_script" => "Preparing environment".to_string(),
            "get_sources" => "Getting source from Git repository".to_string(),
            "clear_worktree" => return,
            "restore_cache" => "Restoring cache".to_string(),
            "download_artifacts" => "Downloading artifacts".to_string(),
            "build_script" => "Executing \"step_script\" stage of the job script".to_string(),
            "after_script" => "Running after_script".to_string(),
            "archive_cache" => "Saving cache for successful job".to_string(),
            "archive_cache_on_failure" => "Saving cache for failed job".to_string(),
            "upload_artifacts_on_success" => "Uploading artifacts for successful job".to_string(),
            "upload_artifacts_on_failure" => "Uploading artifacts for failed job".to_string(),
            "cleanup_file_variables" => {
                "Cleaning up project directory and file based variables".to_string()
            }
            s => format!("Executing \"{s}\" stage of the job script"),
        };
        self.line("");
        self.line(&title);
        if stage == "build_script" {
            self.line("WARNING: Starting with version 17.0 the 'build_script' stage will be replaced with 'step_script': https://gitlab.com/groups/gitlab-org/-/epics/6112");
        }
    }

    fn stage_failure(rec: &StageRecord) -> Option<Verdict> {
        match &rec.result {
            StageResult::Success => None,
            StageResult::BuildFailure { exit_code } => Some(Verdict::BuildFailure {
                exit_code: *exit_code,
            }),
            StageResult::SystemFailure { message } => Some(Verdict::SystemFailure {
                message: message.clone(),
            }),
        }
    }

    /// Run stages (spec §4.1), then cleanup. Returns the verdict.
    fn run_phase(&mut self) -> Verdict {
        let v = self.run_stages();
        self.status = match &v {
            Verdict::Success => "success",
            Verdict::Canceled => "canceled",
            Verdict::TimedOut => "timedout",
            _ => "failed",
        };
        self.cleanup();
        v
    }

    fn run_stages(&mut self) -> Verdict {
        let prep_deadline = self.runner.prepare_timeout.map(|t| self.start + t);
        // 1. prepare_script
        self.section("prepare_script");
        let rec = match self.run_stage("prepare_script", prep_deadline) {
            Ok(r) => r,
            Err(v) => return v,
        };
        if let Some(v) = Self::stage_failure(&rec) {
            return v;
        }
        // 2. get_sources (+ clear_worktree before retries)
        self.section("get_sources");
        let mut failure: Option<Verdict> = None;
        let mut sources_timed_out = false;
        let attempts = self.attempts("GET_SOURCES_ATTEMPTS");
        for a in 1..=attempts {
            if a > 1 {
                if let Err(v) = self.run_stage("clear_worktree", None) {
                    return v;
                }
            }
            let d = self.runner.get_sources_timeout.map(|t| Instant::now() + t);
            let rec = match self.run_stage("get_sources", d) {
                Ok(r) => r,
                Err(v) => return v,
            };
            failure = Self::stage_failure(&rec);
            if rec.terminated == Some(Termination::Timeout) {
                sources_timed_out = true;
                failure = Some(Verdict::SystemFailure {
                    message: "get_sources timed out".into(),
                });
                break;
            }
            if failure.is_none() {
                break;
            }
        }
        // 3. restore_cache, 4. download_artifacts
        for (on, stage, key) in [
            (
                self.job.cache.is_some(),
                "restore_cache",
                "RESTORE_CACHE_ATTEMPTS",
            ),
            (
                self.job.download_artifacts,
                "download_artifacts",
                "ARTIFACT_DOWNLOAD_ATTEMPTS",
            ),
        ] {
            if failure.is_some() || !on {
                continue;
            }
            self.section(stage);
            for _ in 0..self.attempts(key) {
                let rec = match self.run_stage(stage, None) {
                    Ok(r) => r,
                    Err(v) => return v,
                };
                failure = Self::stage_failure(&rec);
                if failure.is_none() {
                    break;
                }
            }
        }
        let pre_ok = failure.is_none();
        let mut canceled = false;
        if pre_ok {
            // 5. build_script, 6. step_*
            let mut steps: Vec<String> = vec!["build_script".into()];
            if self.job.release.is_some() {
                steps.push("step_release".into());
            }
            for s in steps {
                if failure.is_some() || canceled {
                    break;
                }
                self.section(&s);
                let rec = match self.run_stage(&s, None) {
                    Ok(r) => r,
                    Err(v) => return v,
                };
                if rec.terminated == Some(Termination::Cancel) {
                    canceled = true;
                } else {
                    failure = Self::stage_failure(&rec);
                }
            }
        }
        self.status = if canceled {
            "canceled"
        } else if failure.is_some() {
            "failed"
        } else {
            "success"
        };
        // 7. after_script
        if pre_ok && !self.job.after_script.is_empty() {
            self.section("after_script");
            let d = Instant::now() + Duration::from_secs(300);
            match self.run_stage("after_script", Some(d)) {
                Ok(rec) => {
                    if !rec.result.is_success() {
                        self.line(&format!(
                            "WARNING: after_script failed, but job will continue unaffected: {}",
                            rec.status_text
                        ));
                    }
                }
                Err(v) => return v,
            }
        }
        let job_ok = failure.is_none() && !canceled;
        // 8. archive_cache[_on_failure], 9. upload_artifacts_on_*
        let cache_stage = if job_ok {
            "archive_cache"
        } else {
            "archive_cache_on_failure"
        };
        let art_stage = if job_ok {
            "upload_artifacts_on_success"
        } else {
            "upload_artifacts_on_failure"
        };
        for (w, stage) in [
            (self.job.cache, cache_stage),
            (self.job.artifacts, art_stage),
        ] {
            if !w.is_some_and(|w: When| w.applies(job_ok)) {
                continue;
            }
            self.section(stage);
            let rec = match self.run_stage(stage, None) {
                Ok(r) => r,
                Err(v) => return v,
            };
            if failure.is_none() && !canceled {
                failure = Self::stage_failure(&rec);
            }
        }
        // 10. cleanup_file_variables
        if !sources_timed_out {
            self.section("cleanup_file_variables");
            match self.run_stage("cleanup_file_variables", None) {
                Ok(rec) => {
                    if !rec.result.is_success() {
                        self.line(&format!(
                            "WARNING: cleanup_file_variables failed: {}",
                            rec.status_text
                        ));
                    }
                }
                Err(v) => return v,
            }
        }
        if canceled {
            return Verdict::Canceled;
        }
        failure.unwrap_or(Verdict::Success)
    }

    // ----- script bodies ---------------------------------------------------------------------

    fn exports(&self, b: &mut Vec<String>) {
        let d = self.dirs.clone().expect("dirs");
        let tmpdir = script::dq_path(&d.tmp_project_dir);
        for v in self.all_variables() {
            if !valid_name(&v.key) {
                continue;
            }
            if v.file {
                let path = script::dq_path(&format!("{}/{}", d.tmp_project_dir, v.key));
                b.push(format!("mkdir -p {tmpdir}"));
                b.push(format!(
                    "printf '%s' {} > {path}",
                    script::ansi_c_quote(&v.value)
                ));
                b.push(format!("export {}={path}", v.key));
            } else {
                b.push(format!("export {}={}", v.key, script::shell_word(&v.value)));
            }
        }
        let env_file = script::dq_path(&format!("{}/gitlab_runner_env", d.tmp_project_dir));
        b.push(format!("export GITLAB_ENV={env_file}"));
        b.push(format!("mkdir -p {tmpdir}"));
        b.push("touch \"$GITLAB_ENV\"".into());
        b.push("while IFS= read -r line || [[ -n \"$line\" ]]; do [[ -n \"$line\" ]] && export \"$line\"; done < \"$GITLAB_ENV\"".into());
    }

    fn cd_project(&self, b: &mut Vec<String>) {
        let d = self.dirs.as_ref().expect("dirs");
        b.push(format!("cd {}", script::dq_path(&d.project_dir)));
    }

    fn commands(b: &mut Vec<String>, cmds: &[String]) {
        for c in cmds {
            b.push(script::echo_command(c));
            b.push(c.clone());
        }
    }

    fn guarded(b: &mut Vec<String>, what: &str, cmd: String, fatal: bool) {
        let on_fail = if fatal {
            String::new()
        } else {
            format!(" || {}", script::echo_warning(&format!("{what} failed")))
        };
        b.push(format!(
            "if \"gitlab-runner\" \"--version\" >/dev/null 2>/dev/null; then {cmd}{on_fail}; else {}; fi",
            script::echo_warning(&format!("Missing gitlab-runner. {what} is disabled."))
        ));
    }

    fn stage_body(&self, stage: &str) -> String {
        let d = self.dirs.clone().expect("dirs");
        let j = self.job;
        let mut b: Vec<String> = Vec::new();
        let hostname = self.config.hostname.clone();
        let rel_cache = format!("{}/{}/{}/cache.zip", d.cache_dir, j.project, j.cache_key);
        match stage {
            "prepare_script" => {
                let via = hostname.map(|h| format!(" via {h}")).unwrap_or_default();
                b.push(format!(
                    "echo \"Running on $(hostname){}...\"",
                    via.replace('"', "\\\"").replace('$', "\\$")
                ));
            }
            "get_sources" => {
                self.exports(&mut b);
                b.push(script::echo_info(
                    "Fetching changes with git depth set to 20...",
                ));
                b.push(format!("mkdir -p {}", script::dq_path(&d.project_dir)));
                self.cd_project(&mut b);
                b.push(format!(
                    "printf '%s\\n' {} > .harness-get-sources",
                    script::shell_word(&format!("job={} sha={}", j.id, j.commit_sha))
                ));
                b.push(format!(
                    "echo {}",
                    script::ansi_c_quote(&format!(
                        "Checking out {} as detached HEAD (ref is {})...",
                        &j.commit_sha[..8],
                        j.ref_name
                    ))
                ));
                b.push("echo 'Skipping Git submodules setup'".into());
                Self::commands(&mut b, &j.get_sources_script);
            }
            "clear_worktree" => {
                self.exports(&mut b);
                b.push(format!("if [ -d {0} ]; then cd {0} && find . -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +; fi", script::dq_path(&d.project_dir)));
            }
            "restore_cache" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                b.push(script::echo_info(&format!(
                    "Checking cache for {}...",
                    j.cache_key
                )));
                Self::guarded(
                    &mut b,
                    "Extracting cache",
                    format!(
                        "gitlab-runner cache-extractor --file {} --timeout 10",
                        script::shell_word(&rel_cache)
                    ),
                    false,
                );
            }
            "download_artifacts" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                Self::guarded(
                    &mut b,
                    "Artifacts downloading",
                    format!("gitlab-runner artifacts-downloader --url {} --token glcbt-dependency --id {}", self.runner.url, j.id - 1),
                    true,
                );
            }
            "build_script" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                let cmds: Vec<String> = j
                    .before_script
                    .iter()
                    .chain(j.script.iter())
                    .cloned()
                    .collect();
                Self::commands(&mut b, &cmds);
            }
            "after_script" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                Self::commands(&mut b, &j.after_script);
            }
            "archive_cache" | "archive_cache_on_failure" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                b.push(script::echo_info(&format!(
                    "Creating cache {}...",
                    j.cache_key
                )));
                Self::guarded(
                    &mut b,
                    "Creating cache",
                    format!(
                        "gitlab-runner cache-archiver --file {} --timeout 10 --path vendor/",
                        script::shell_word(&rel_cache)
                    ),
                    false,
                );
            }
            "upload_artifacts_on_success" | "upload_artifacts_on_failure" => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                b.push(script::echo_info("Uploading artifacts..."));
                Self::guarded(
                    &mut b,
                    "Uploading artifacts",
                    format!(
                        "gitlab-runner artifacts-uploader --url {} --token {} --id {} --path out/",
                        self.runner.url,
                        j.job_token(),
                        j.id
                    ),
                    true,
                );
            }
            "cleanup_file_variables" => {
                for v in j.variables.iter().filter(|v| v.file && valid_name(&v.key)) {
                    b.push(format!(
                        "rm -f {}",
                        script::dq_path(&format!("{}/{}", d.tmp_project_dir, v.key))
                    ));
                }
                b.push(format!(
                    "rm -f {}",
                    script::dq_path(&format!("{}/gitlab_runner_env", d.tmp_project_dir))
                ));
            }
            s if s.starts_with("step_") => {
                self.exports(&mut b);
                self.cd_project(&mut b);
                let cmds = j.release.clone().unwrap_or_default();
                Self::commands(&mut b, &cmds);
            }
            _ => {}
        }
        let mut s = b.join("\n");
        s.push('\n');
        s
    }
}

/// Feature flags gitlab-runner 19.4 resolves for every job (subset, with their defaults).
const FEATURE_FLAGS: &[(&str, bool)] = &[
    ("FF_NETWORK_PER_BUILD", false),
    ("FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY", false),
    ("FF_USE_DIRECT_DOWNLOAD", true),
    ("FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", false),
    ("FF_ENABLE_BASH_EXIT_CODE_CHECK", false),
    ("FF_USE_WINDOWS_LEGACY_PROCESS_STRATEGY", false),
    ("FF_USE_FASTZIP", false),
    ("FF_RESOLVE_FULL_TLS_CHAIN", false),
    ("FF_POSIXLY_CORRECT_ESCAPES", false),
    ("FF_USE_POWERSHELL_PATH_RESOLVER", false),
    ("FF_SCRIPT_SECTIONS", false),
    ("FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY", true),
    ("FF_USE_ADAPTIVE_REQUEST_CONCURRENCY", true),
    ("FF_TIMESTAMPS", false),
    ("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION", false),
    ("FF_USE_GIT_BUNDLE_URIS", true),
    ("FF_USE_GIT_NATIVE_CLONE", false),
    ("FF_USE_LEGACY_BASH_EVAL", false),
    ("FF_GIT_URLS_WITHOUT_TOKENS", false),
];

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Expand `$VAR` / `${VAR}` in every non-raw value against the (unexpanded) list, last wins.
fn expand_all(vars: &mut [Variable]) {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    for v in vars.iter_mut() {
        if !v.raw && v.value.contains('$') {
            v.value = expand(&v.value, &map);
        }
    }
}

fn expand(s: &str, map: &HashMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'{' {
                if let Some(end) = s[i + 2..].find('}') {
                    let name = &s[i + 2..i + 2 + end];
                    out.push_str(map.get(name).map(String::as_str).unwrap_or(""));
                    i += 3 + end;
                    continue;
                }
            }
            let n = b[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            if n > 0 {
                out.push_str(
                    map.get(&s[i + 1..i + 1 + n])
                        .map(String::as_str)
                        .unwrap_or(""),
                );
                i += 1 + n;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn write_script(tmp: &Path, content: &str) -> std::io::Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("script")
        .tempdir_in(tmp)?
        .keep();
    let path = dir.join("script");
    std::fs::write(&path, content)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    Ok(path)
}

/// Exit-code rules of spec §5.
fn classify(st: &std::process::ExitStatus, code_file: &Path) -> StageResult {
    let code = process::exit_code(st);
    match code {
        0 => StageResult::Success,
        1 => match std::fs::read_to_string(code_file) {
            Err(_) => StageResult::BuildFailure { exit_code: 1 },
            Ok(text) => {
                let first = text.lines().next().unwrap_or("").trim();
                match first.parse::<i32>() {
                    Ok(n) => StageResult::BuildFailure { exit_code: n },
                    Err(e) => StageResult::SystemFailure {
                        message: format!(
                            "unknown Custom executor executable exit code 2; executable execution terminated with: failed to parse build exit code file {:?}: {e}",
                            first
                        ),
                    },
                }
            }
        },
        2 => StageResult::SystemFailure { message: "exit status 2".into() },
        n => StageResult::SystemFailure {
            message: format!(
                "unknown Custom executor executable exit code {n}; executable execution terminated with: {}",
                process::describe(st)
            ),
        },
    }
}

/// Go's `time.Duration.String()` for whole seconds and milliseconds (`1h0m0s`, `3s`, `250ms`).
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor() as u64;
    let m = ((secs - h as f64 * 3600.0) / 60.0).floor() as u64;
    let s = secs - h as f64 * 3600.0 - m as f64 * 60.0;
    let s_str = if (s - s.round()).abs() < 1e-9 {
        format!("{}", s.round() as u64)
    } else {
        format!("{s}")
    };
    if h > 0 {
        format!("{h}h{m}m{s_str}s")
    } else if m > 0 {
        format!("{m}m{s_str}s")
    } else {
        format!("{s_str}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(3)), "3s");
        assert_eq!(go_duration(Duration::from_millis(50)), "50ms");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn config_parse() {
        assert_eq!(ConfigOutput::parse(b"").unwrap(), ConfigOutput::default());
        let c = ConfigOutput::parse(br#" {"builds_dir":"/b","job_env":{"A":"1"},"unknown":3} "#)
            .unwrap();
        assert_eq!(c.builds_dir.as_deref(), Some("/b"));
        assert!(ConfigOutput::parse(b"hello\n{}")
            .unwrap_err()
            .starts_with("error while parsing JSON output: "));
        assert!(ConfigOutput::parse(b"{} {}").is_err());
        assert!(ConfigOutput::parse(b"[]").is_err());
        assert!(ConfigOutput::parse(br#"{"builds_dir_is_shared":"true"}"#).is_err());
        assert!(ConfigOutput::parse(br#"{"job_env":{"A":1}}"#).is_err());
    }

    #[test]
    fn expansion() {
        let mut m = HashMap::new();
        m.insert("A".to_string(), "x".to_string());
        assert_eq!(expand("$A-${A}-$B-$$", &m), "x-x--$");
    }
}
