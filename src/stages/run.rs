//! Run stage: feed the runner's script to a login shell in the VM over the job's existing
//! connection, stream its output, and turn its ending into the runner's exit code.
//!
//! The last run stage also prints where the job's time went: cleanup's output reaches only
//! the runner's own log, never the job log.

use std::path::Path;

use anyhow::{anyhow, Context};

use crate::backend::Backend;
use crate::failure::{Failure, StageResult};
use crate::guest::transport::{RemoteExit, Stage};
use crate::host::state_dir::StateDir;
use crate::job::JobContext;
use crate::settings::{Options, Settings};

/// Runs `script` (a file on this host) as the job's stage `stage` (`build_script`, ...).
pub fn run(options: &Options, script: &Path, stage: &str) -> StageResult {
    let settings = Settings::load(options)?;
    let job = JobContext::from_env(&settings)?;
    crate::logging::init_for_job(&settings.job_overrides, job.vm_name().as_str());
    let root = StateDir::open(&settings.state_dir)?;
    let backend = Backend::for_settings(&settings)?;
    let state = backend.job_vm(&root, &job.vm_name());
    let conn = state.load_connection()?.ok_or_else(|| {
        anyhow!(
            "no VM is ready for this job ({}): prepare did not finish",
            state.name
        )
    })?;
    let script_file = std::fs::File::open(script)
        .with_context(|| format!("cannot open the script {}", script.display()))?;
    let started = std::time::Instant::now();
    let exit = crate::rt::runtime().block_on(async {
        let transport = backend.transport(&conn, &state).await?;
        transport
            .run_stage(
                &Stage {
                    shell: &conn.shell,
                    env: &conn.env,
                },
                script_file,
            )
            .await
            .map(|exit| backend.interpret(exit))
    })?;
    state.record_phase(&format!("stage {stage}"), started.elapsed());
    if is_last_stage(stage, &exit) {
        if let Some(summary) = state.timing_summary() {
            eprintln!("{summary}");
        }
    }
    match exit {
        RemoteExit::Code(0) => Ok(()),
        RemoteExit::Code(code) => Err(Failure::Build(code)),
        RemoteExit::Broken(why) => Err(Failure::System(anyhow!(
            "stage {stage}: {why}. The VM still runs, but whether the script finished is unknown: this is not the script's failure; retry the job (GitLab `retry: when: runner_system_failure`)"
        ))),
        RemoteExit::Lost(why) => {
            // The connection often drops a moment before the supervisor has recorded how
            // `tart run` ended; Tart's words are worth a short wait.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let ending = loop {
                match state.run_ending() {
                    Some(ending) => break Some(ending),
                    None if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(100))
                    }
                    None => break None,
                }
            };
            let detail = ending.map(|e| format!("; Tart: {e}")).unwrap_or_default();
            Err(Failure::System(anyhow!(
                "stage {stage}: {why}{detail}. The VM is gone; retry the job (GitLab `retry: when: runner_system_failure`)"
            )))
        }
    }
}

/// Whether gitlab-runner calls no further run stage after this one, so the job log's time
/// summary belongs at its end. `cleanup_file_variables` comes last whenever the scripts ran
/// (after success, failure or cancel); a failed `prepare_script` is followed by nothing.
/// A job timeout skips the remaining stages, and with them the summary.
fn is_last_stage(stage: &str, exit: &RemoteExit) -> bool {
    match stage {
        "cleanup_file_variables" => true,
        "prepare_script" => !matches!(exit, RemoteExit::Code(0)),
        _ => false,
    }
}
