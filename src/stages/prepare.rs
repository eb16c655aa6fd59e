//! Prepare stage: from an image to a booted VM with one open connection, timed phase by
//! phase in the job log.
//!
//! Order matters for cleanup: the VM's state directory and lock exist before the VM does,
//! so a crash at any point leaves something `cleanup` or the next sweep can find.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::backend::{Backend, Made, NewVm};
use crate::failure::{Failure, StageResult};
use crate::guest;
use crate::guest::transport::{RemoteExit, Transport};
use crate::host::state_dir::StateDir;
use crate::host::vm::VmState;
use crate::job::request::Request;
use crate::job::JobContext;
use crate::settings::{Options, Settings};

pub fn prepare(options: &Options) -> StageResult {
    let settings = Settings::load(options)?;
    let job = JobContext::from_env(&settings)?;
    crate::logging::init_for_job(&settings.job_overrides, job.vm_name().as_str());
    let request = Request::resolve(&settings, &job)?;
    crate::rt::runtime().block_on(async {
        let mut cancelled = crate::guest::transport::relay::Cancel::listen()?;
        let finished = tokio::select! {
            biased;
            _ = cancelled.recv() => None,
            result = prepare_vm(&settings, &job, &request) => Some(result),
        };
        match finished {
            None => cancel(&settings, &job).await,
            // The runner's SIGTERM reaches our Tart commands too, and one of them may fail
            // from it a moment before we hear the signal: that failure is the cancel.
            Some(Err(_))
                if tokio::time::timeout(Duration::from_millis(300), cancelled.recv())
                    .await
                    .is_ok() =>
            {
                cancel(&settings, &job).await
            }
            Some(result) => result,
        }
    })
}

/// gitlab-runner cancels a prepare with SIGTERM (a job cancel or timeout). What prepare had
/// started is dropped, and the VM goes at once rather than waiting for cleanup, which
/// gitlab-runner does not always get to run.
async fn cancel(settings: &Settings, job: &JobContext) -> StageResult {
    let vm = job.vm_name();
    eprintln!("Prepare cancelled: removing VM {vm}...");
    let root = StateDir::open(&settings.state_dir)?;
    let backend = Backend::for_settings(settings)?;
    let state = backend.job_vm(&root, &vm);
    backend.destroy(&state, None).await?;
    if state.name != vm {
        // The job's own record, which named the warm VM it ran in.
        VmState::new(&root, &vm).forget_job_record().await?;
    }
    Err(Failure::System(anyhow!(
        "prepare was cancelled (SIGTERM); VM {vm} is removed"
    )))
}

async fn prepare_vm(settings: &Settings, job: &JobContext, request: &Request) -> StageResult {
    let started = Instant::now();
    let backend = Backend::for_settings(settings)?;
    let vm = job.vm_name();
    let root = StateDir::open(&settings.state_dir)?;
    let state = VmState::new(&root, &vm);
    eprintln!("Preparing VM {vm} from {}", request.image.name);

    let lock = state
        .create_and_lock(Duration::from_secs(30))
        .await?
        .ok_or_else(|| {
            anyhow!("VM {vm} is still held by an earlier attempt of this job; retry in a minute")
        })?;
    state.forget_connection()?;

    let job_limit = Duration::from_secs(job.job_timeout_secs.unwrap_or(3600));
    // gitlab-runner ends every job by its timeout; an hour more covers cleanup's own.
    state.set_expiry(job_limit + Duration::from_secs(3600))?;
    let new = NewVm {
        job,
        request,
        root: &root,
        state: &state,
        lock,
        job_limit,
    };
    // The VM's lock stays held until prepare ends.
    let made = backend.create(new).await?;
    set_up_guest(&backend, settings, request, &made, started).await?;
    Ok(())
}

/// The last part of prepare, in a VM of its own or a claimed warm one: gitlab-runner and
/// the shares in the guest, then the connection recorded for the later stages.
async fn set_up_guest(
    backend: &Backend<'_>,
    settings: &Settings,
    request: &Request,
    made: &Made,
    started: Instant,
) -> StageResult {
    let Made {
        state,
        conn,
        shares,
        ..
    } = made;
    let os = conn.os.as_str();
    let t = Instant::now();
    let transport = backend.transport(conn, state).await?;
    if request.install.copy_from_host && (request.install.wanted || request.install.force) {
        copy_gitlab_runner(&transport, os).await?;
    }
    let dirs = [
        settings.guest_builds_dir.as_str(),
        settings.guest_cache_dir.as_str(),
    ];
    let script = guest::setup_script(os, shares, &dirs, &request.install);
    match transport
        .run_captured(
            &crate::guest::login::in_login_env("exec sh -s"),
            script.as_bytes(),
            Duration::from_secs(600),
        )
        .await?
    {
        (RemoteExit::Code(0), out) => {
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                eprintln!("  {line}");
            }
        }
        (RemoteExit::Code(code), out) => {
            return Err(anyhow!("guest setup failed with exit code {code}: {}", out.trim()).into());
        }
        (RemoteExit::Lost(why) | RemoteExit::Broken(why), _) => {
            return Err(anyhow!("guest setup: {why}").into())
        }
    }
    state.save_connection(conn)?;
    crate::logging::phase_done("Guest ready", t);
    state.record_phase("guest setup", t.elapsed());
    crate::logging::phase_done(&format!("VM {} prepared", state.name), started);
    Ok(())
}

/// Copies this host's gitlab-runner into the guest's tools directory, when the guest can run
/// it: no network needed, and the same version as the runner that calls us.
async fn copy_gitlab_runner(transport: &Transport, os: &str) -> anyhow::Result<()> {
    if !guest::guest_runs_host_binaries(os) {
        eprintln!(
            "  gitlab-runner: this host's binary cannot run in a {os} guest; downloading instead"
        );
        return Ok(());
    }
    let Some(binary) = guest::host_gitlab_runner() else {
        eprintln!("  gitlab-runner: not found on this host's PATH; downloading instead");
        return Ok(());
    };
    let bytes =
        std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let dir = guest::GUEST_TOOLS_DIR;
    let command = format!(
        "mkdir -p \"$HOME/{dir}\" && cat > \"$HOME/{dir}/gitlab-runner.part\" && chmod 0755 \"$HOME/{dir}/gitlab-runner.part\" && mv \"$HOME/{dir}/gitlab-runner.part\" \"$HOME/{dir}/gitlab-runner\""
    );
    match transport
        .run_captured(&command, &bytes, Duration::from_secs(300))
        .await?
    {
        (RemoteExit::Code(0), _) => {
            eprintln!(
                "  gitlab-runner: copied {} ({:.1} MB) into the VM",
                binary.display(),
                bytes.len() as f64 / 1e6
            );
            Ok(())
        }
        (RemoteExit::Code(code), out) => anyhow::bail!(
            "copying gitlab-runner into the VM failed ({code}): {}",
            out.trim()
        ),
        (RemoteExit::Lost(why) | RemoteExit::Broken(why), _) => {
            anyhow::bail!("copying gitlab-runner into the VM: {why}")
        }
    }
}
