//! A test bed for end-to-end jobs: a simulated Mac (Tart simulator with real SSH guests), a
//! private driver state directory, and a gitlab-runner configured for our driver.
#![allow(dead_code)]

pub mod orchard;
pub mod warm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::sim::{Image, SimHost};
use harness::Runner;

pub const MACOS: &str = "ghcr.io/cirruslabs/macos-sequoia-base:latest";
pub const MACOS_VANILLA: &str = "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest";
pub const LINUX: &str = "ghcr.io/cirruslabs/ubuntu:latest";

pub const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

pub struct Bed {
    pub sim: SimHost,
    pub state_dir: PathBuf,
    /// Admin options given to every stage.
    pub options: Vec<String>,
}

impl Bed {
    /// A host with the stock images: macOS base (agent), macOS vanilla, Ubuntu (agent).
    pub fn new() -> Bed {
        let sim = SimHost::new()
            .with_image(MACOS, Image::darwin().agent(true))
            .with_image(MACOS_VANILLA, Image::darwin())
            .with_image(LINUX, Image::linux().agent(true));
        let state_dir = sim.root().join("state");
        Bed {
            sim,
            state_dir,
            options: Vec::new(),
        }
    }

    pub fn image(mut self, name: &str, image: Image) -> Bed {
        self.sim.add_image(name, image);
        self
    }

    /// Adds admin options (flags) to every stage.
    pub fn option<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Bed {
        self.options.extend(args.into_iter().map(Into::into));
        self
    }

    fn stage_args(&self, stage: &str) -> Vec<String> {
        let mut args = vec![
            stage.to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
        ];
        args.extend(self.options.iter().cloned());
        args
    }

    pub fn runner(&self) -> Runner {
        Runner::new(DRIVER)
            .config_args(self.stage_args("config"))
            .prepare_args(self.stage_args("prepare"))
            .run_args(self.stage_args("run"))
            .cleanup_args(self.stage_args("cleanup"))
            .envs(self.sim.env())
            .prepare_retry_pause(Duration::from_millis(200))
            .graceful_kill_timeout(Duration::from_secs(10))
    }

    /// Runs the driver binary directly with this bed's environment.
    pub fn driver(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(DRIVER)
            .args(args)
            .envs(self.sim.env())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run driver")
    }

    /// `doctor --format json` with this bed's environment and `state_dir`: one object per
    /// check (`check`, `status`, `detail`, `fix`).
    pub fn doctor_checks(&self, state_dir: &Path) -> Vec<serde_json::Value> {
        let out = self.driver(&[
            "doctor",
            "--format",
            "json",
            "--state-dir",
            state_dir.to_str().unwrap(),
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The check named `name` of [`Bed::doctor_checks`] for this bed's state dir.
    #[track_caller]
    pub fn doctor_check(&self, name: &str) -> serde_json::Value {
        let checks = self.doctor_checks(&self.state_dir);
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no check {name:?}: {checks:#?}"))
            .clone()
    }

    /// Asserts that nothing of the job is left on the host: no VM, no process mentioning the
    /// simulated host or the state directory (ssh masters, supervisors, tart run, guests), no
    /// per-job state, no socket, no held slot.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        let left = self.left_behind();
        assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    }

    /// Like [`Bed::assert_nothing_left`], but waits up to `limit` for processes that are
    /// still on their way out (a killed supervisor's `tart run`, a closing ssh master).
    #[track_caller]
    pub fn assert_nothing_left_within(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = self.left_behind();
            if left.is_empty() {
                return;
            }
            if std::time::Instant::now() >= deadline {
                panic!("left behind:\n{}", left.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Everything of ours still on the host, one line each; empty when clean.
    pub fn left_behind(&self) -> Vec<String> {
        let state = self.state_dir.display().to_string();
        let leaks = self.sim.leaks(Some(&state), None);
        let mut left: Vec<String> = leaks.vms.iter().map(|v| format!("VM {v}")).collect();
        left.extend(
            leaks
                .processes
                .iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        left.extend(
            self.vm_state_dirs()
                .iter()
                .map(|p| format!("state {}", p.display())),
        );
        left.extend(
            sockets_under(&self.state_dir)
                .iter()
                .map(|p| format!("socket {}", p.display())),
        );
        left.extend(
            self.held_slots()
                .iter()
                .map(|p| format!("slot held {}", p.display())),
        );
        left
    }

    /// Per-VM state directories under the state dir.
    pub fn vm_state_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state_dir.join("vms"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Slot lock files some process still holds (an flock we cannot take).
    pub fn held_slots(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.state_dir.join("slots")) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| {
                let Ok(f) = std::fs::File::open(p) else {
                    return false;
                };
                use std::os::unix::io::AsRawFd;
                // SAFETY: flock on a descriptor we own; closing it releases the lock.
                let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                rc != 0
            })
            .collect()
    }

    /// A job driven stage by stage without the harness, for killing stages at chosen
    /// points. Its environment is what gitlab-runner gives every stage (payload file, exit
    /// codes, CUSTOM_ENV_ job variables).
    pub fn direct_job(&self, image: &str) -> DirectJob {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = 900_000_000
            + u64::from(std::process::id() % 100_000) * 1000
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix("direct-job")
            .tempdir()
            .expect("temp dir");
        std::fs::write(
            dir.path().join("response.json"),
            format!("{{\"id\": {id}}}"),
        )
        .expect("payload");
        DirectJob {
            id,
            token: "direct".into(),
            vars: vec![
                ("CI_JOB_ID".into(), id.to_string()),
                ("CI_RUNNER_SHORT_TOKEN".into(), "direct".into()),
                ("CI_JOB_IMAGE".into(), image.into()),
                ("CI_JOB_TIMEOUT".into(), "600".into()),
            ],
            dir,
            payload: true,
        }
    }

    /// `gitlab-runner-tart-driver <args> --state-dir <bed> <options>` for `job`, leading its
    /// own process group as gitlab-runner starts it.
    pub fn stage_command(&self, job: &DirectJob, args: &[&str]) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(DRIVER);
        cmd.args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.options)
            .envs(self.sim.env())
            .env("TMPDIR", job.dir.path())
            .env("BUILD_FAILURE_EXIT_CODE", "1")
            .env("SYSTEM_FAILURE_EXIT_CODE", "2")
            .env("BUILD_EXIT_CODE_FILE", job.dir.path().join("exit-code"))
            .current_dir(job.dir.path())
            .stdin(std::process::Stdio::null())
            .process_group(0);
        if job.payload {
            cmd.env("JOB_RESPONSE_FILE", job.dir.path().join("response.json"));
        }
        for (k, v) in &job.vars {
            cmd.env(format!("CUSTOM_ENV_{k}"), v);
        }
        cmd
    }

    /// Runs one stage of `job` to its end; returns its exit code and stderr (the job log).
    pub fn stage(&self, job: &DirectJob, args: &[&str]) -> (i32, String) {
        let out = self
            .stage_command(job, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run driver stage");
        let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), log)
    }

    /// Runs `script` as run stage `stage` of `job`.
    pub fn run_script(&self, job: &DirectJob, stage: &str, script: &[u8]) -> (i32, String) {
        let path = job.dir.path().join(format!("script-{stage}"));
        std::fs::write(&path, script).expect("write script");
        self.stage(job, &["run", path.to_str().unwrap(), stage])
    }
}

/// A job run without the harness (see [`Bed::direct_job`]).
pub struct DirectJob {
    pub id: u64,
    pub token: String,
    /// Job variables, given to stages as `CUSTOM_ENV_<name>`.
    pub vars: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    /// Whether stages get `JOB_RESPONSE_FILE` (gitlab-runner 14.1+ always sets it).
    pub payload: bool,
}

impl DirectJob {
    /// Stages get no `JOB_RESPONSE_FILE`, as from gitlab-runner older than 14.1.
    pub fn without_payload(mut self) -> DirectJob {
        self.payload = false;
        self
    }
    /// Another identity: the runner's short token and the payload's job id.
    pub fn identity(mut self, token: &str, id: u64) -> DirectJob {
        std::fs::write(
            self.dir.path().join("response.json"),
            format!("{{\"id\": {id}}}"),
        )
        .expect("payload");
        self.id = id;
        self.token = token.into();
        self.var("CI_RUNNER_SHORT_TOKEN", token)
            .var("CI_JOB_ID", &id.to_string())
    }
    pub fn vm_name(&self) -> String {
        format!("tartdrv-{}-{}", self.token, self.id)
    }
    pub fn var(mut self, k: &str, v: &str) -> DirectJob {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.into(), v.into()));
        self
    }
}

/// Unix sockets anywhere under `dir`.
pub fn sockets_under(dir: &std::path::Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_socket() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Sends `signal` to the process group `pgid` (as gitlab-runner does to a stage).
pub fn kill_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) on a process group the test started.
    unsafe { libc::kill(-(pgid as i32), signal) };
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of live processes whose argv contains every one of `needles`.
pub fn pids_with_args(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
