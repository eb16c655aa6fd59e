//! The harness against a tiny shell-script driver (`fixtures/driver.sh`): stage order, the
//! environment, exit-code rules, retries, cancellation and timeouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{run_job, Job, Runner, StageResult, Termination, Verdict, When};

struct Fx {
    state: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        Fx {
            state: tempfile::Builder::new()
                .prefix("harness-fx")
                .tempdir()
                .unwrap(),
        }
    }
    fn dir(&self) -> &Path {
        self.state.path()
    }
    fn driver() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/driver.sh")
    }
    fn runner(&self) -> Runner {
        Runner::with_subcommands(Self::driver())
            .env("FIX_STATE", self.dir().display().to_string())
            .prepare_retry_pause(Duration::from_millis(20))
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
    fn env(&self, stage: &str) -> HashMap<String, String> {
        let text = std::fs::read_to_string(self.dir().join(format!("env.{stage}")))
            .unwrap_or_else(|e| panic!("no env recorded for {stage}: {e}"));
        // `env` output; values with newlines are rare in these tests, keep it simple.
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// True once `pid` is gone or a zombie (waits up to 2 s for init to reap it).
fn process_gone(pid: &str) -> bool {
    for _ in 0..40 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

#[test]
fn simple_job_stage_order_and_log() {
    let fx = Fx::new();
    let out = run_job(&fx.runner(), &Job::new().script(["echo hello-from-job"]));
    out.assert_success()
        .assert_run_stages(&[
            "prepare_script",
            "get_sources",
            "build_script",
            "cleanup_file_variables",
        ])
        .assert_log_contains("Using Custom executor with driver fixture 1.0...")
        .assert_log_contains("config: hello from stderr")
        .assert_log_contains("prepare: booting the environment")
        .assert_log_contains("via fixture-vm...")
        .assert_log_contains("\x1b[32;1m$ echo hello-from-job\x1b[0;m")
        .assert_log_contains("hello-from-job\n")
        .assert_log_contains("Job succeeded")
        .assert_clean();
    assert_eq!(
        fx.calls(),
        [
            "config",
            "prepare",
            "run prepare_script",
            "run get_sources",
            "run build_script",
            "run cleanup_file_variables",
            "cleanup"
        ]
    );
    // cleanup output is not in the job log but in the runner log
    assert!(!out.log.contains("cleanup: stdout line"));
    assert!(out.runner_log.contains("cleanup: stdout line"));
    assert_eq!(out.cleanups.len(), 1);
    assert_eq!(out.cleanups[0].stderr, "cleanup: stderr line\n");
    // the temp dir is gone; the project dir was created by get_sources
    assert!(!out.tmpdirs[0].exists());
    let pd = out.project_dir.clone().unwrap();
    assert_eq!(pd, format!("{}/builds/group/project", fx.dir().display()));
    assert!(Path::new(&pd).join(".harness-get-sources").exists());
    assert!(out.stages.iter().all(|s| s.duration > Duration::ZERO));
    // own process group, stdin from /dev/null
    let pg = std::fs::read_to_string(fx.dir().join("pgid.config")).unwrap();
    let (pid, pgid) = pg.trim().split_once(' ').unwrap();
    assert_eq!(pid, pgid, "driver must lead its own process group");
    assert_eq!(
        std::fs::read_to_string(fx.dir().join("stdin.config"))
            .unwrap()
            .trim(),
        "/dev/null"
    );
    // cwd = TMPDIR
    let cwd = std::fs::read_to_string(fx.dir().join("cwd.config")).unwrap();
    assert_eq!(cwd.trim(), out.tmpdirs[0].display().to_string());
}

#[test]
fn full_stage_order_with_after_script_cache_artifacts_release() {
    let fx = Fx::new();
    let job = Job::new()
        .before_script(["echo before"])
        .script(["echo main"])
        .after_script(["echo after"])
        .cache(true)
        .artifacts(true)
        .download_artifacts(true)
        .release(["echo releasing"]);
    let out = run_job(&fx.runner(), &job);
    out.assert_success().assert_run_stages(&[
        "prepare_script",
        "get_sources",
        "restore_cache",
        "download_artifacts",
        "build_script",
        "step_release",
        "after_script",
        "archive_cache",
        "upload_artifacts_on_success",
        "cleanup_file_variables",
    ]);
    out.assert_log_contains("Missing gitlab-runner. Uploading artifacts is disabled.")
        .assert_log_contains("Missing gitlab-runner. Creating cache is disabled.")
        .assert_log_contains("Executing \"step_script\" stage of the job script")
        .assert_log_contains("Starting with version 17.0 the 'build_script' stage will be replaced")
        .assert_log_contains("releasing\n");
    assert_eq!(
        fx.env("after_script")["CUSTOM_ENV_CI_JOB_STATUS"],
        "success"
    );
    assert_eq!(
        fx.env("build_script")["CUSTOM_ENV_CI_JOB_STATUS"],
        "running"
    );
    assert_eq!(fx.env("cleanup")["CUSTOM_ENV_CI_JOB_STATUS"], "success");
}

#[test]
fn build_failure_uses_exit_code_file_and_runs_failure_stages() {
    let fx = Fx::new();
    let job = Job::new()
        .script(["echo one", "exit 3", "echo never"])
        .after_script(["echo after"])
        .cache_when(When::Always)
        .artifacts_when(When::OnFailure);
    let out = run_job(&fx.runner(), &job);
    out.assert_build_failure(3).assert_run_stages(&[
        "prepare_script",
        "get_sources",
        "restore_cache",
        "build_script",
        "after_script",
        "archive_cache_on_failure",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    ]);
    assert!(!out.log.contains("never"));
    out.assert_log_contains("ERROR: Job failed: exit status 3");
    assert_eq!(out.stage("build_script").unwrap().exit_code, Some(1));
    assert_eq!(fx.env("after_script")["CUSTOM_ENV_CI_JOB_STATUS"], "failed");
}

#[test]
fn build_failure_without_code_file_is_exit_1() {
    let fx = Fx::new();
    // A driver that exits 1 without writing BUILD_EXIT_CODE_FILE: the job's exit code is 1.
    let out = run_job(
        &fx.runner().env("FIX_NO_CODE_FILE", "1"),
        &Job::new().script(["exit 6"]),
    );
    out.assert_build_failure(1);
}

#[test]
fn unparseable_exit_code_file_is_system_failure() {
    let fx = Fx::new();
    let out = run_job(
        &fx.runner().env("FIX_CODE_FILE_CONTENT", "banana\n"),
        &Job::new().script(["exit 4"]),
    );
    out.assert_system_failure();
    let r = &out.stage("build_script").unwrap().result;
    assert!(
        matches!(r, StageResult::SystemFailure { message } if message.contains("exit code 2")),
        "{r:?}"
    );
}

#[test]
fn exit_2_and_unknown_codes_in_run_stage_are_system_failures() {
    let fx = Fx::new();
    let out = run_job(
        &fx.runner().env("FIX_SYSTEM_FAIL_STAGE", "build_script"),
        &Job::new(),
    );
    out.assert_verdict(Verdict::SystemFailure {
        message: "exit status 2".into(),
    });
    out.assert_log_contains("ERROR: Job failed (system failure): exit status 2");

    let fx = Fx::new();
    let runner = fx
        .runner()
        .env("FIX_SYSTEM_FAIL_STAGE", "build_script")
        .env("FIX_SYSTEM_FAIL_CODE", "7");
    let out = run_job(&runner, &Job::new());
    out.assert_system_failure();
    let Verdict::SystemFailure { message } = &out.verdict else {
        unreachable!()
    };
    assert!(
        message.starts_with("unknown Custom executor executable exit code 7;"),
        "{message}"
    );
}

#[test]
fn prepare_exit_2_is_retried_three_times_with_cleanup_after_each() {
    let fx = Fx::new();
    let out = run_job(&fx.runner().env("FIX_PREPARE_EXIT", "2"), &Job::new());
    out.assert_system_failure();
    assert_eq!(out.prepare_attempts, 3);
    assert_eq!(fx.calls(), ["config", "prepare", "cleanup"].repeat(3));
    assert_eq!(out.cleanups.len(), 3);
    assert_eq!(out.tmpdirs.len(), 3);
    let mut dirs = out.tmpdirs.clone();
    dirs.dedup();
    assert_eq!(dirs.len(), 3, "each attempt gets a fresh temp dir");
    assert!(out.tmpdirs.iter().all(|d| !d.exists()));
    out.assert_log_contains("Will be retried in 20ms ...");
    assert!(out.run_stage_names().is_empty());
}

#[test]
fn prepare_exit_1_is_not_retried() {
    let fx = Fx::new();
    let out = run_job(&fx.runner().env("FIX_PREPARE_EXIT", "1"), &Job::new());
    out.assert_build_failure(1);
    assert_eq!(out.prepare_attempts, 1);
    assert_eq!(fx.calls(), ["config", "prepare", "cleanup"]);
}

#[test]
fn config_log_line_on_stdout_is_a_parse_error_and_retried() {
    let fx = Fx::new();
    let out = run_job(&fx.runner().env("FIX_CONFIG_LOGLINE", "1"), &Job::new());
    out.assert_system_failure();
    assert_eq!(out.prepare_attempts, 3);
    assert_eq!(fx.calls(), ["config", "cleanup"].repeat(3));
    out.assert_log_contains("error while parsing JSON output: ");
}

#[test]
fn config_exit_1_is_a_build_failure_not_retried() {
    let fx = Fx::new();
    let out = run_job(&fx.runner().env("FIX_CONFIG_EXIT", "1"), &Job::new());
    out.assert_build_failure(1);
    assert_eq!(fx.calls(), ["config", "cleanup"]);
}

#[test]
fn missing_builds_dir_is_a_configuration_error() {
    let fx = Fx::new();
    let runner = fx
        .runner()
        .env("FIX_CONFIG_JSON", r#"{"cache_dir":"/tmp/c"}"#);
    let out = run_job(&runner, &Job::new());
    out.assert_verdict(Verdict::SystemFailure {
        message: "the builds_dir is not configured".into(),
    });
    assert_eq!(out.prepare_attempts, 1);
    // config.toml values are the fallback; empty stdout is accepted
    let b = fx.dir().join("b").display().to_string();
    let runner = fx
        .runner()
        .env("FIX_CONFIG_JSON", "")
        .builds_dir(b.clone())
        .cache_dir("/tmp/c");
    let out = run_job(&runner, &Job::new());
    out.assert_success();
    assert_eq!(
        out.project_dir.as_deref(),
        Some(format!("{b}/group/project").as_str())
    );
    out.assert_log_contains("Using Custom executor...\n");
}

#[test]
fn environment_follows_the_spec() {
    let fx = Fx::new();
    let runner = fx.runner().env("RUNNER_PROCESS_VAR", "inherited");
    let job = Job::new()
        .image("ghcr.io/cirruslabs/macos-tahoe-base:latest")
        .var("CI_PROJECT_PATH", "user/override")
        .var("REF", "${CI_JOB_NAME}-x")
        .masked_var("SECRET", "s3cr3t-value-123")
        .file_var("MYFILE", "line1\nline2 'q'\n")
        .script([
            "echo $SECRET",
            "cat \"$MYFILE\"",
            "echo \"FROM_ENV=yes\" >> \"$GITLAB_ENV\"",
        ])
        .after_script(["echo after:$FROM_ENV:$REF"]);
    let out = run_job(&runner, &job);
    out.assert_success();
    let cfg = fx.env("config");
    let prep = fx.env("prepare");
    let build = fx.env("build_script");
    let clean = fx.env("cleanup");
    let tmp = out.tmpdirs[0].display().to_string();
    for e in [&cfg, &prep, &build, &clean] {
        assert_eq!(e["TMPDIR"], tmp);
        assert_eq!(e["BUILD_FAILURE_EXIT_CODE"], "1");
        assert_eq!(e["SYSTEM_FAILURE_EXIT_CODE"], "2");
        assert_eq!(e["BUILD_EXIT_CODE_FILE"], format!("{tmp}/build_exit_code"));
        assert_eq!(e["JOB_RESPONSE_FILE"], format!("{tmp}/response.json"));
        assert_eq!(e["RUNNER_PROCESS_VAR"], "inherited");
        assert_eq!(e["CUSTOM_ENV_CI_JOB_ID"], job.id.to_string());
        assert_eq!(
            e["CUSTOM_ENV_CI_JOB_IMAGE"],
            "ghcr.io/cirruslabs/macos-tahoe-base:latest"
        );
        assert_eq!(e["CUSTOM_ENV_CI_JOB_SERVICES"], "");
        assert_eq!(e["CUSTOM_ENV_CI_SERVER"], "yes");
        assert_eq!(e["CUSTOM_ENV_CI_SHARED_ENVIRONMENT"], "true");
        assert_eq!(e["CUSTOM_ENV_GITLAB_CI"], "true");
        assert_eq!(
            e["CUSTOM_ENV_CI_PROJECT_PATH"], "user/override",
            "user variables win"
        );
        assert_eq!(e["CUSTOM_ENV_REF"], "test-x", "expanded");
        assert_eq!(
            e["CUSTOM_ENV_MYFILE"], "line1",
            "file variables by content (first line here)"
        );
        assert_eq!(e["CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN"], runner.short_token());
        assert_eq!(e["CUSTOM_ENV_FF_USE_LEGACY_BASH_EVAL"], "false");
        assert!(!e.contains_key("CUSTOM_ENV_CI_DISPOSABLE_ENVIRONMENT"));
        assert!(e.contains_key("CUSTOM_ENV_CI_JOB_TOKEN"));
        assert!(e.contains_key("CUSTOM_ENV_CI_REGISTRY"));
        assert!(e.contains_key("CUSTOM_ENV_CI_CONCURRENT_ID"));
        assert!(e.contains_key("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID"));
        assert_eq!(e["CUSTOM_ENV_CI_JOB_TIMEOUT"], "3600");
    }
    // job_env: not for config, unprefixed for everything after
    assert!(!cfg.contains_key("FIX_JOB_ENV"));
    assert_eq!(prep["FIX_JOB_ENV"], "from-config");
    assert_eq!(build["FIX_JOB_ENV"], "from-config");
    assert_eq!(clean["FIX_JOB_ENV"], "from-config");
    let pd = out.project_dir.clone().unwrap();
    assert_eq!(build["CUSTOM_ENV_CI_PROJECT_DIR"], pd);
    assert_eq!(
        build["CUSTOM_ENV_RUNNER_TEMP_PROJECT_DIR"],
        format!("{pd}.tmp")
    );
    // masking, file variables, GITLAB_ENV
    assert!(!out.log.contains("s3cr3t-value-123"));
    out.assert_log_contains("[MASKED]");
    out.assert_log_contains("line2 'q'");
    out.assert_log_contains("after:yes:test-x");
    assert!(
        !Path::new(&format!("{pd}.tmp/MYFILE")).exists(),
        "cleanup_file_variables removed it"
    );
    // response.json is the payload
    assert!(out.stages[0]
        .tmpdir
        .ends_with(out.tmpdirs[0].file_name().unwrap()));
}

#[test]
fn response_json_is_written_0600_with_the_payload() {
    let fx = Fx::new();
    let runner = fx.runner();
    let job = Job::new()
        .image("img:1")
        .service("postgres:16")
        .var("USER_VAR", "v");
    // Have build_script copy the response file out.
    let dest = fx.dir().join("resp.json");
    let job = job.script([format!(
        "cp \"$JOB_RESPONSE_FILE\" {}; stat -c %a \"$JOB_RESPONSE_FILE\" > {}.mode",
        dest.display(),
        dest.display()
    )]);
    let out = run_job(&runner, &job);
    out.assert_success();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dest).unwrap()).unwrap();
    assert_eq!(v["id"], job.id);
    assert_eq!(v["image"]["name"], "img:1");
    assert_eq!(v["services"][0]["name"], "postgres:16");
    assert_eq!(v["runner_info"]["timeout"], 3600);
    assert!(v["variables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["key"] == "USER_VAR" && x["value"] == "v"));
    assert!(
        !v["variables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["key"] == "CI_BUILDS_DIR"),
        "only server-sent variables"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}.mode", dest.display()))
            .unwrap()
            .trim(),
        "600"
    );
    let services = fx.env("build_script")["CUSTOM_ENV_CI_JOB_SERVICES"].clone();
    let s: serde_json::Value = serde_json::from_str(&services).unwrap();
    assert_eq!(
        s,
        serde_json::json!([{"name":"postgres:16","alias":"","entrypoint":null,"command":null}])
    );
}

#[test]
fn no_image_means_no_ci_job_image() {
    let fx = Fx::new();
    run_job(&fx.runner(), &Job::new()).assert_success();
    assert!(!fx.env("prepare").contains_key("CUSTOM_ENV_CI_JOB_IMAGE"));
}

#[test]
fn cancel_in_build_script_sends_term_then_kill_and_runs_failure_stages() {
    let fx = Fx::new();
    let pidfile = fx.dir().join("child.pid");
    let runner = fx
        .runner()
        .env("FIX_IGNORE_TERM_STAGE", "build_script")
        .graceful_kill_timeout(Duration::from_millis(400));
    let job = Job::new()
        .script([format!("sleep 30 & echo $! > {}; wait", pidfile.display())])
        .after_script(["echo after-cancel"])
        .artifacts_when(When::OnFailure)
        .cache(true)
        .cancel_after("build_script", Duration::from_millis(300));
    let out = run_job(&runner, &job);
    out.assert_verdict(Verdict::Canceled).assert_run_stages(&[
        "prepare_script",
        "get_sources",
        "restore_cache",
        "build_script",
        "after_script",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    ]);
    let b = out.stage("build_script").unwrap();
    assert_eq!(b.terminated, Some(Termination::Cancel));
    assert!(b.sigkilled, "driver ignored TERM, so SIGKILL must follow");
    assert_eq!(b.status_text, "signal: killed");
    assert!(
        b.duration >= Duration::from_millis(650) && b.duration < Duration::from_secs(5),
        "{:?}",
        b.duration
    );
    assert!(std::fs::read_to_string(fx.dir().join("term"))
        .unwrap()
        .contains("driver got TERM"));
    // the grandchild in the same process group got TERM too
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(process_gone(&pid), "sleep {pid} survived");
    assert_eq!(
        fx.env("after_script")["CUSTOM_ENV_CI_JOB_STATUS"],
        "canceled"
    );
    assert_eq!(fx.env("cleanup")["CUSTOM_ENV_CI_JOB_STATUS"], "canceled");
    out.assert_log_contains("after-cancel");
}

#[test]
fn cancel_with_a_driver_that_honours_term_needs_no_kill() {
    let fx = Fx::new();
    let job = Job::new()
        .script(["sleep 30"])
        .cancel_after("build_script", Duration::from_millis(200));
    let out = run_job(&fx.runner(), &job);
    out.assert_verdict(Verdict::Canceled);
    let b = out.stage("build_script").unwrap();
    assert!(!b.sigkilled);
    // The fixture driver has no TERM trap of its own, so it dies by the signal.
    assert_eq!(b.exit_code, Some(-1));
    assert_eq!(b.status_text, "signal: terminated");
    assert!(b.duration < Duration::from_secs(3));
}

#[test]
fn abort_skips_remaining_run_stages() {
    let fx = Fx::new();
    let job = Job::new()
        .script(["sleep 30"])
        .after_script(["echo after"])
        .abort_after("build_script", Duration::from_millis(200));
    let out = run_job(&fx.runner(), &job);
    out.assert_verdict(Verdict::Canceled);
    assert!(out.aborted);
    out.assert_run_stages(&["prepare_script", "get_sources", "build_script"]);
    assert_eq!(out.cleanups.len(), 1);
}

#[test]
fn abort_wait_moves_on_to_cleanup_while_the_stage_lives() {
    let fx = Fx::new();
    let runner = fx
        .runner()
        .env("FIX_IGNORE_TERM_STAGE", "build_script")
        .graceful_kill_timeout(Duration::from_secs(2))
        .abort_wait(Duration::from_millis(300));
    let job = Job::new()
        .script(["sleep 30"])
        .abort_after("build_script", Duration::from_millis(100));
    let out = run_job(&runner, &job);
    out.assert_verdict(Verdict::Canceled);
    let b = out.stage("build_script").unwrap();
    assert!(b.gave_up);
    let pid = b.pid.unwrap();
    // cleanup started while the old run_exec was still alive
    assert!(out.cleanups[0].started < b.started + Duration::from_secs(2));
    // ...and the background SIGKILL reaps it after graceful_kill_timeout
    std::thread::sleep(Duration::from_millis(2000));
    assert!(process_gone(&pid.to_string()));
}

#[test]
fn job_timeout_kills_the_stage_and_skips_the_rest() {
    let fx = Fx::new();
    let job = Job::new()
        .script(["sleep 30"])
        .after_script(["echo after"])
        .artifacts_when(When::Always)
        .timeout(Duration::from_secs(1));
    let out = run_job(&fx.runner(), &job);
    out.assert_verdict(Verdict::TimedOut);
    out.assert_run_stages(&["prepare_script", "get_sources", "build_script"]);
    assert_eq!(
        out.stage("build_script").unwrap().terminated,
        Some(Termination::Timeout)
    );
    assert_eq!(fx.env("cleanup")["CUSTOM_ENV_CI_JOB_STATUS"], "timedout");
    out.assert_log_contains("execution took longer than 1s seconds");
}

#[test]
fn cleanup_failure_does_not_change_the_verdict() {
    let fx = Fx::new();
    let out = run_job(&fx.runner().env("FIX_CLEANUP_EXIT", "2"), &Job::new());
    out.assert_success();
    assert_eq!(out.cleanups[0].exit_code, Some(2));
    assert!(out.runner_log.contains("Cleanup script failed"));
}

#[test]
fn get_sources_attempts_and_clear_worktree() {
    let fx = Fx::new();
    let flag = fx.dir().join("flag");
    let job = Job::new()
        .var("GET_SOURCES_ATTEMPTS", "3")
        .get_sources_script([format!(
            "if [ ! -e {0} ]; then touch {0}; exit 5; fi",
            flag.display()
        )]);
    let out = run_job(&fx.runner(), &job);
    out.assert_success().assert_run_stages(&[
        "prepare_script",
        "get_sources",
        "clear_worktree",
        "get_sources",
        "build_script",
        "cleanup_file_variables",
    ]);
}

#[test]
fn get_sources_failure_still_runs_failure_stages() {
    let fx = Fx::new();
    let job = Job::new()
        .get_sources_script(["exit 9"])
        .after_script(["echo nope"])
        .artifacts_when(When::Always);
    let out = run_job(&fx.runner(), &job);
    out.assert_build_failure(9).assert_run_stages(&[
        "prepare_script",
        "get_sources",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    ]);
}

#[test]
fn prepare_script_failure_stops_run_stages() {
    let fx = Fx::new();
    let out = run_job(
        &fx.runner().env("FIX_SYSTEM_FAIL_STAGE", "prepare_script"),
        &Job::new().after_script(["x"]),
    );
    out.assert_system_failure()
        .assert_run_stages(&["prepare_script"]);
    assert_eq!(fx.calls().last().unwrap(), "cleanup");
}

#[test]
fn script_executed_directly_and_shared_builds_dir() {
    let fx = Fx::new();
    let json = format!(
        r#"{{"builds_dir":"{0}/b","cache_dir":"{0}/c","builds_dir_is_shared":true}}"#,
        fx.dir().display()
    );
    let runner = fx
        .runner()
        .env("FIX_RUN_MODE", "exec")
        .env("FIX_CONFIG_JSON", json);
    let out = run_job(&runner, &Job::new().project("a/b/c").script(["pwd"]));
    out.assert_success();
    let expect = format!("{}/b/{}/0/a/b/c", fx.dir().display(), runner.short_token());
    assert_eq!(out.project_dir.as_deref(), Some(expect.as_str()));
    out.assert_log_contains(&format!("{expect}\n"));
    let s = out.stage("build_script").unwrap();
    let meta = std::fs::metadata(fx.dir().join("script.build_script")).unwrap();
    assert!(meta.len() > 0);
    let path = s.script_path.as_ref().unwrap();
    assert_eq!(path.file_name().unwrap(), "script");
    assert!(path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("script"));
}

#[test]
fn concurrent_ids_are_lowest_free() {
    let fx = Fx::new();
    let runner = fx.runner();
    let r2 = runner.clone();
    let j1 = Job::new().script(["sleep 1"]);
    let h = std::thread::spawn(move || run_job(&r2, &j1));
    std::thread::sleep(Duration::from_millis(300));
    let o2 = run_job(&runner, &Job::new().project("other/p"));
    let o1 = h.join().unwrap();
    o1.assert_success();
    o2.assert_success();
    assert_eq!(o1.concurrent_id, 0);
    assert_eq!(o2.concurrent_id, 1);
    let o3 = run_job(&runner, &Job::new());
    assert_eq!(o3.concurrent_id, 0);
}

#[test]
fn legacy_bash_eval_flag_switches_the_script_form() {
    let fx = Fx::new();
    let job = Job::new()
        .var("FF_USE_LEGACY_BASH_EVAL", "true")
        .script(["echo legacy-ok"]);
    let out = run_job(&fx.runner(), &job);
    out.assert_success().assert_log_contains("legacy-ok\n");
    let s = out.stage("build_script").unwrap().script.clone().unwrap();
    assert!(s.contains("\n: | eval $'"), "{s}");
    assert_eq!(
        fx.env("build_script")["CUSTOM_ENV_FF_USE_LEGACY_BASH_EVAL"],
        "true"
    );
}

#[test]
fn a_child_holding_the_pipes_open_is_reported() {
    let fx = Fx::new();
    let runner = fx.runner().output_drain_timeout(Duration::from_millis(200));
    // get_sources leaves a background process that inherited the driver's stdout.
    let job = Job::new().get_sources_script(["(sleep 2 &)"]);
    let out = run_job(&runner, &job);
    out.assert_success();
    assert!(out.stage("get_sources").unwrap().pipes_held_open);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.starts_with("get_sources: stdout/stderr still open")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn build_script_body_exports_variables_and_changes_dir() {
    let fx = Fx::new();
    let job = Job::new()
        .var("SPACED", "a b")
        .file_var("F", "x")
        .script(["make test"]);
    let out = run_job(
        &fx.runner().env("FIX_SYSTEM_FAIL_STAGE", "build_script"),
        &job,
    );
    out.assert_system_failure();
    let script = out.stage("build_script").unwrap().script.clone().unwrap();
    let pd = out.project_dir.clone().unwrap();
    for needle in [
        "export SPACED=$\\'a b\\'\\n",
        &format!("export CI_PROJECT_DIR={pd}\\n"),
        &format!("export F=\"{pd}.tmp/F\"\\n"),
        &format!("export GITLAB_ENV=\"{pd}.tmp/gitlab_runner_env\"\\n"),
        &format!("cd \"{pd}\"\\necho $\\'\\\\x1b[32;1m$ make test\\\\x1b[0;m\\'\\nmake test\\n"),
    ] {
        assert!(script.contains(needle), "missing {needle}\n{script}");
    }
}
