//! Prepare stage: from an image to a booted VM with one open connection, timed phase by
//! phase in the job log.
//!
//! Order matters for cleanup: the VM's state directory and lock exist before the VM does,
//! so a crash at any point leaves something `cleanup` or the next sweep can find.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::cli::StageArgs;
use crate::failure::{Failure, StageResult};
use crate::foreign;
use crate::guest::{self, Share};
use crate::host;
use crate::identity::Identity;
use crate::job::JobContext;
use crate::lifecycle;
use crate::ownership;
use crate::registry_access::{self, CredentialFreeHome};
use crate::request::Request;
use crate::settings::Settings;
use crate::state_dir::StateDir;
use crate::supervisor;
use crate::tart::{Fetch, Tart};
use crate::tart_home::{self, VmConfig};
use crate::transport::{RemoteExit, Transport};
use crate::vm::VmState;

pub fn prepare(args: &StageArgs) -> StageResult {
    let settings = Settings::load(&args.options)?;
    let job = JobContext::from_env(&settings)?;
    crate::logging::init_for_job(&settings.job_overrides, job.vm_name().as_str());
    let request = Request::resolve(&settings, &job)?;
    super::runtime().block_on(async {
        let mut cancelled = crate::transport::relay::Cancel::listen()?;
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
    let tart = Tart::new(&settings.tart_executable);
    let state = crate::warm::record::job_vm(&root, &vm);
    lifecycle::teardown(&tart, settings, &state, None).await?;
    if state.name != vm {
        VmState::new(&root, &vm).remove()?;
    }
    Err(Failure::System(anyhow!(
        "prepare was cancelled (SIGTERM); VM {vm} is removed"
    )))
}

async fn prepare_vm(settings: &Settings, job: &JobContext, request: &Request) -> StageResult {
    let started = Instant::now();
    let tart = Tart::new(&settings.tart_executable);
    let vm = job.vm_name();
    let root = StateDir::open(&settings.state_dir)?;
    let state = VmState::new(&root, &vm);
    eprintln!("Preparing VM {vm} from {}", request.image.name);

    // One `tart list` serves the sweep, the leftover check and the pull policy.
    let list = tart.list().await?;
    match lifecycle::sweep_listed(&tart, settings, &root, Some(&vm), false, &list).await {
        // Other jobs' names stay out of this job's log (they name other projects' jobs).
        Ok(swept) if !swept.removed.is_empty() => eprintln!(
            "Removed {} orphaned VM(s) left by earlier jobs",
            swept.removed.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("WARNING: orphan sweep failed: {e:#}"),
    }

    let lock = state
        .create_and_lock(Duration::from_secs(30))?
        .ok_or_else(|| {
            anyhow!("VM {vm} is still held by an earlier attempt of this job; retry in a minute")
        })?;
    // A leftover of an earlier attempt: its processes are gone (we hold the lock).
    if list.iter().any(|e| e.name == vm.as_str()) {
        tart.delete(vm.as_str()).await?;
    }
    state.forget_connection()?;

    let job_limit = Duration::from_secs(job.job_timeout_secs.unwrap_or(3600));
    // gitlab-runner ends every job by its timeout; an hour more covers cleanup's own.
    state.set_expiry(job_limit + Duration::from_secs(3600))?;
    let fetch = Fetch {
        creds: request.registry.clone(),
        home: CredentialFreeHome::for_host(&settings.registry, &settings.state_dir)?,
        insecure: settings.insecure_pull,
        concurrency: settings.pull_concurrency,
        auto_prune: settings.auto_prune,
    };
    let t = Instant::now();
    if registry_access::fetch_image(
        &tart,
        &settings.registry,
        &request.image,
        request.pull_policy,
        &fetch,
        job_limit,
        list.iter().any(|e| e.name == request.image.name),
    )
    .await?
    {
        super::phase_done(&format!("Pulled {}", request.image.name), t);
        state.record_phase("pull", t.elapsed());
    }

    if let Some(claimed) =
        super::claimed::try_warm(settings, &root, request, &state, job_limit).await?
    {
        return super::claimed::prepare(&tart, settings, job, request, claimed, started).await;
    }

    let t = Instant::now();
    // The image is on this host now (pulled, or cached and vetted): the clone needs no login.
    let local = fetch.without_credentials();
    tart.clone_vm(&request.image.name, vm.as_str(), &local, job_limit)
        .await
        .map_err(|e| {
            anyhow!(
                "{e:#}. If the disk is full, run `gitlab-runner-tart-driver gc --state-dir {}` and `tart prune`",
                root.path().display()
            )
        })?;
    // From now on the VM exists: mark it as this state directory's, for the sweeps.
    ownership::mark(&vm, &root)?;
    let info = configure(&tart, settings, request, vm.as_str()).await?;
    super::phase_done(
        &format!(
            "Cloned {} ({} guest, {} CPUs, {} MiB)",
            request.image.name, info.os, info.cpu, info.memory_mib
        ),
        t,
    );
    state.record_phase("clone", t.elapsed());

    let shares = shares(settings, job, &vm.to_string())?;
    if request.nested && info.os != "linux" {
        eprintln!(
            "Nested virtualization (--nested, TART_EXECUTOR_NESTED) ignored: Tart offers it to Linux guests only, and refuses to start a {} guest with it",
            info.os
        );
    }
    let mut run_args = request.run_args(settings, &info.os);
    for share in &shares {
        run_args.push("--dir".into());
        run_args.push(share.dir_arg(&info.os));
    }
    let identity = Identity::create(&state)?;
    run_args.push("--dir".into());
    run_args.push(identity.dir_arg());

    // Our own hold on the VM's lock lasts until prepare ends. When `tart run` dies at once,
    // the supervisor lets go of it; a concurrent job's sweep would then take the VM for an
    // orphan and delete it with its state, including how `tart run` ended, and this prepare
    // would wait out the whole boot timeout instead of reporting Tart's message.
    let lock_fd = std::os::unix::io::AsRawFd::as_raw_fd(&lock);
    let _lock = lock;
    let resolver = if settings.bridged.is_some() {
        "arp"
    } else {
        "dhcp"
    };
    let macos = info.os != "linux";
    let slot_deadline = crate::clock::deadline_after(job_limit);
    let mut at_limit = foreign::LimitWait::new();
    let (conn, t) = loop {
        let t = Instant::now();
        let slots =
            crate::warm::capacity::acquire_for_job(&tart, settings, &root, macos, slot_deadline)
                .await?;
        if t.elapsed() > Duration::from_millis(500) {
            super::phase_done("Got a VM slot", t);
        }
        state.record_phase("waiting for a slot", t.elapsed());
        let t = Instant::now();
        let mut fds = slots.raw_fds();
        fds.push(lock_fd);
        supervisor::start(&state, tart.exe(), &run_args, fds)?;
        drop(slots);
        let deadline = crate::clock::deadline_after(request.boot_timeout);
        match super::connect::connect(
            &tart, &state, request, &identity, &info.os, resolver, deadline,
        )
        .await
        {
            Ok(conn) => break (conn, t),
            // Apple's limit is full of macOS VMs this driver did not start: wait for them
            // as for a slot, then start the same VM again.
            Err(_) if macos && foreign::hit_the_limit(&state) => {
                if Instant::now() + foreign::RETRY_PAUSE >= slot_deadline {
                    return Err(at_limit.gave_up(&state).into());
                }
                at_limit.notice(&state);
                tokio::time::sleep(foreign::RETRY_PAUSE).await;
                state.forget_run_log()?;
            }
            Err(e) => return Err(e),
        }
    };
    super::phase_done(
        &format!(
            "VM booted and reachable over {}",
            super::connect::transport_name(&conn)
        ),
        t,
    );
    state.record_phase("boot and connect", t.elapsed());
    set_up_guest(
        &tart, settings, request, &state, &conn, &info.os, &shares, started,
    )
    .await?;
    super::claimed::replenish(settings, &root);
    Ok(())
}

/// The last part of prepare, in a VM of its own or a claimed warm one: gitlab-runner and
/// the shares in the guest, then the connection recorded for the later stages.
#[allow(clippy::too_many_arguments)]
pub(super) async fn set_up_guest(
    tart: &Tart,
    settings: &Settings,
    request: &Request,
    state: &VmState,
    conn: &crate::vm::Connection,
    os: &str,
    shares: &[Share],
    started: Instant,
) -> StageResult {
    let t = Instant::now();
    let transport = Transport::from_connection(conn, state, tart)?;
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
            &crate::login::in_login_env("exec sh -s"),
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
    super::phase_done("Guest ready", t);
    state.record_phase("guest setup", t.elapsed());
    super::phase_done(&format!("VM {} prepared", state.name), started);
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

/// Applies CPU, memory and display in one `tart set`, and only when something changes:
/// the clone's `config.json` tells what it has (`tart get` only when that cannot be read).
pub(super) async fn configure(
    tart: &Tart,
    settings: &Settings,
    request: &Request,
    vm: &str,
) -> Result<VmConfig, Failure> {
    let mut config = match tart_home::vm_config(vm) {
        Some(config) => config,
        None => {
            let info = tart.get(vm).await?;
            VmConfig {
                os: info.os,
                cpu: info.cpu,
                memory_mib: info.memory,
                minimum: host::Minimum::default(),
            }
        }
    };
    let sizing = host::vm_resources(settings, config.minimum, config.os != "linux").map_err(
        |too_small| match too_small {
            host::TooSmall::Image(why) => {
                Failure::rejected(format!("image `{}`: {why}", request.image.name))
            }
            host::TooSmall::Settings(why) => {
                Failure::System(anyhow!("image `{}`: {why}", request.image.name))
            }
        },
    )?;
    let mut flags = Vec::new();
    if let Some(cpu) = sizing.cpu.filter(|&cpu| cpu != config.cpu) {
        flags.extend(["--cpu".to_string(), cpu.to_string()]);
        config.cpu = cpu;
    }
    if let Some(memory) = sizing.memory_mib.filter(|&m| m != config.memory_mib) {
        flags.extend(["--memory".to_string(), memory.to_string()]);
        config.memory_mib = memory;
    }
    if let Some(display) = &request.display {
        flags.extend(["--display".to_string(), display.0.clone()]);
    }
    if request.random_mac {
        flags.push("--random-mac".to_string());
    }
    if !flags.is_empty() {
        tart.set(vm, &flags).await?;
    }
    Ok(config)
}

/// The host directories this job's VM gets: its own builds directory, its project's cache
/// directory and the admin's volumes.
pub(super) fn shares(
    settings: &Settings,
    job: &JobContext,
    vm: &str,
) -> anyhow::Result<Vec<Share>> {
    let mut shares = Vec::new();
    if let Some(builds) = &settings.builds_dir {
        let dir = builds.join(vm);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the builds directory {}", dir.display()))?;
        shares.push(Share {
            name: "tartdrv-builds".into(),
            host: dir,
            guest: settings.guest_builds_dir.clone(),
            read_only: false,
        });
    }
    if let Some(cache) = &settings.cache_dir {
        // One cache per project, keyed by the id in GitLab's payload (not by a variable the
        // job could set): a job cannot read or poison another project's cache.
        let project = match job.project_id {
            Some(id) => format!("project-{id}"),
            None => "project-unknown".to_string(),
        };
        let dir = cache.join(project);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
        shares.push(Share {
            name: "tartdrv-cache".into(),
            host: dir,
            guest: settings.guest_cache_dir.clone(),
            read_only: false,
        });
    }
    for (i, volume) in settings.volumes.iter().enumerate() {
        if !volume.host.is_dir() {
            anyhow::bail!(
                "volume host directory {} does not exist: create it or fix --volume",
                volume.host.display()
            );
        }
        shares.push(Share {
            name: format!("tartdrv-vol{i}"),
            host: volume.host.clone(),
            guest: volume.guest.clone(),
            read_only: volume.read_only,
        });
    }
    Ok(shares)
}
