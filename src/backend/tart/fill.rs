//! One pass of local Tart's warm pool: retire the warm VMs that can no longer serve a job
//! (their image's digest or the settings changed, the host is short of memory, their boot
//! was cut short), then clone and boot VMs until the pool has `--warm-pool` of them, split
//! over `--warm-image`s. A VM joins the pool only once it answers a login. A boot that fails
//! is removed and recorded; background passes do not boot that image digest again.
//!
//! The caller (the `warm` stage) holds the replenisher's lock.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{capacity, lifecycle};
use crate::failure::Failure;
use crate::guest::identity::Identity;
use crate::host::ownership;
use crate::host::registry_policy::CredentialFreeHome;
use crate::host::state_dir::StateDir;
use crate::host::supervisor;
use crate::host::tart::{Fetch, Tart};
use crate::host::vm::VmState;
use crate::job::registry_access;
use crate::job::request::Request;
use crate::job::JobContext;
use crate::model::PullPolicy;
use crate::settings::Settings;
use crate::warm::pool::{self, Member, Status};
use crate::warm::spec::WarmSpec;
use crate::warm::{record, replenish};

/// Memory (MiB) the host keeps for itself beyond the warm VMs: below this much available,
/// unclaimed warm VMs are stopped and none is booted.
const MEMORY_FLOOR_MIB: u64 = 2048;

/// The VM a pool member for `image` is started as: the admin's settings, no job variables.
fn request_for(settings: &Settings, image: &str) -> Result<Request> {
    let nobody = JobContext {
        job_id: 0,
        runner_token: "warm".into(),
        image: Some(image.to_string()),
        project_id: None,
        job_timeout_secs: None,
    };
    Request::resolve(settings, &nobody)
        .map_err(|e| explain(e).context(format!("warm image {image}")))
}

pub async fn fill(settings: &Settings, root: &StateDir, pull: bool) -> Result<()> {
    let tart = Tart::new(&settings.tart_executable);
    let t = std::time::Instant::now();
    // Pull first (the gc agent's pass pre-pulls), then know what each image's VM is now.
    let mut wanted: Vec<(String, Request, WarmSpec)> = Vec::new();
    let home = crate::host::tart_home::home().context(
        "cannot find Tart's home: TART_HOME is not set and the user database has no home for this user; set TART_HOME",
    )?;
    // A pool turned off (or unusable with a cache dir) is emptied: every image unwanted.
    let images = if settings.warm.enabled() && settings.cache_dir.is_none() {
        settings.warm.images.as_slice()
    } else {
        &[]
    };
    for image in images {
        let request = request_for(settings, image)?;
        let policy = if pull {
            PullPolicy::Always
        } else {
            request.pull_policy
        };
        let fetch = fetch_for(settings, &request)?;
        let fetched = match registry_access::fetch_image(
            &tart,
            root,
            &settings.registry,
            &request.image,
            policy,
            &fetch,
            Duration::from_secs(3600),
            &home,
        )
        .await
        {
            Ok(fetched) => match fetched.vet {
                Some(vet) => vet.run().await.map(|()| fetched.source),
                None => Ok(fetched.source),
            },
            Err(e) => Err(e),
        };
        let source = match fetched {
            Ok(source) => source,
            Err(e) => {
                eprintln!("warm pool: cannot fetch {image}: {:#}", explain(e));
                continue;
            }
        };
        match WarmSpec::for_job(settings, &request, &source) {
            Ok(spec) => wanted.push((image.clone(), request, spec)),
            Err(why) => eprintln!("warm pool: {image} skipped: {why}"),
        }
    }

    // Retire what no job can use, and what is beyond an image's share of the pool.
    let low_memory = available_mib() < MEMORY_FLOOR_MIB;
    let mut kept: Vec<String> = Vec::new();
    for member in pool::members(root)? {
        let mut why = retire_reason(&member, &wanted, low_memory);
        if why.is_none() && matches!(member.status, Status::Ready(_)) {
            let image = member.image().unwrap_or_default().to_string();
            if kept.iter().filter(|i| **i == image).count() as u32 >= quota(settings, &image) {
                why = Some("the pool is smaller now".into());
            } else {
                kept.push(image);
            }
        }
        if let Some(why) = why {
            if member.status == Status::Dead {
                lifecycle::teardown(&tart, settings, &member.state, None).await?;
            } else if !lifecycle::evict(&tart, settings, &member).await? {
                continue;
            }
            eprintln!("warm pool: removed a warm VM: {why}");
        }
    }
    // The warm slots of warm VMs that are gone (their files stay behind, unheld).
    capacity::prune(root)?;
    if images.is_empty() {
        return Ok(());
    }
    if low_memory {
        eprintln!(
            "warm pool: less than {MEMORY_FLOOR_MIB} MiB of memory available: no warm VM is kept"
        );
        return Ok(());
    }

    // Fill, image by image, up to each one's share of the pool.
    let failures = replenish::failures(root);
    for (image, request, spec) in &wanted {
        let quota = quota(settings, image);
        if let Some(failed) = failures.get(image).filter(|f| f.digest == spec.digest) {
            eprintln!(
                "warm pool: not booting {image} again: its boot failed {} ({}); run `gitlab-runner-tart-driver warm` to retry",
                pool::ago(pool::now_unix().saturating_sub(failed.at)),
                failed.message
            );
            continue;
        }
        loop {
            let have = pool::members(root)?
                .iter()
                .filter(|m| {
                    matches!(m.status, Status::Ready(_)) && m.image() == Some(image.as_str())
                })
                .count() as u32;
            if have >= quota {
                break;
            }
            match boot_one(&tart, settings, root, request, spec).await {
                Ok(Booted::Ready) => eprintln!(
                    "warm pool: a VM of {image} is ready ({:.1}s)",
                    t.elapsed().as_secs_f64()
                ),
                Ok(Booted::NoRoom(why)) => {
                    eprintln!("warm pool: no room for another warm VM: {why}");
                    return Ok(());
                }
                Ok(Booted::Evicted) => return Ok(()),
                Err(e) => {
                    let message = format!("{e:#}");
                    eprintln!(
                        "warm pool: a VM of {image} failed to boot and was removed: {message}"
                    );
                    replenish::record_failure(
                        root,
                        image,
                        replenish::Failure {
                            digest: spec.digest.clone(),
                            at: pool::now_unix(),
                            message,
                        },
                    )?;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// How many warm VMs of `image` the pool keeps: the pool split evenly over the images,
/// the first ones taking the remainder.
fn quota(settings: &Settings, image: &str) -> u32 {
    let images = &settings.warm.images;
    let Some(i) = images.iter().position(|i| i == image) else {
        return 0;
    };
    let n = images.len() as u32;
    settings.warm.pool / n + u32::from((i as u32) < settings.warm.pool % n)
}

/// Why a warm VM must go, if it must.
fn retire_reason(
    member: &Member,
    wanted: &[(String, Request, WarmSpec)],
    low_memory: bool,
) -> Option<String> {
    match member.status {
        Status::Claimed => return None,
        Status::Dead => return Some("its VM is no longer running".into()),
        // This pass holds the replenisher's lock: a VM still booting was left by a pass
        // that was killed, and nobody will finish it.
        Status::Booting => return Some("its boot was interrupted".into()),
        Status::Ready(_) => {}
    }
    if low_memory {
        return Some("the host is short of memory".into());
    }
    let Some(record) = &member.record else {
        return Some("its record is unreadable".into());
    };
    match wanted
        .iter()
        .find(|(image, _, _)| *image == record.spec.image)
    {
        None => Some(format!("{} is no longer a warm image", record.spec.image)),
        Some((_, _, spec)) => {
            let differs = record.spec.differences(spec);
            (!differs.is_empty()).then(|| format!("its {} changed", differs.join(", ")))
        }
    }
}

enum Booted {
    Ready,
    NoRoom(String),
    /// A cold job stopped it while it booted, to take its slot.
    Evicted,
}

fn fetch_for(settings: &Settings, request: &Request) -> Result<Fetch> {
    Ok(Fetch {
        creds: request.registry.clone(),
        home: CredentialFreeHome::for_host(&settings.registry, &settings.state_dir)?,
        insecure: settings.insecure_pull,
        concurrency: settings.pull_concurrency,
        auto_prune: settings.auto_prune,
    })
}

/// Clones and boots one warm VM and waits until it answers a login. Its record exists and
/// is locked before the clone, as in prepare, so a kill at any point leaves an orphan the
/// sweeps remove.
async fn boot_one(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    request: &Request,
    spec: &WarmSpec,
) -> Result<Booted> {
    let macos = spec.os != "linux";
    // A guest's memory is taken as it touches it, not at boot: what must be free is what
    // a booting guest uses, not its whole share (which a job's VM beside it counts too).
    if available_mib() < 2 * MEMORY_FLOOR_MIB {
        return Ok(Booted::NoRoom(format!(
            "less than {} MiB of memory available",
            2 * MEMORY_FLOOR_MIB
        )));
    }
    let name = record::new_name();
    let slots = match capacity::take_for_warm(settings, root, &name, macos)? {
        Ok(slots) => slots,
        Err(why) => return Ok(Booted::NoRoom(why)),
    };
    crate::fault::point("replenish:took-slots");
    let state = VmState::new(root, &name);
    state.create()?;
    let lock = state
        .lock_now()?
        .context("a fresh warm VM's record is locked by another process")?;
    state.set_expiry(settings.warm.expiry)?;
    let booted = boot(tart, settings, root, &state, request, spec, slots, &lock).await;
    match booted {
        Ok(()) => Ok(Booted::Ready),
        Err(_) if record::claimed_by(&state).as_deref() == Some(record::EVICTED) => {
            Ok(Booted::Evicted)
        }
        // Apple's limit was full of VMs this pool did not start (another runner's, a
        // developer's): no fault of the image, so no failure to remember.
        Err(_) if macos && crate::host::foreign::hit_the_limit(&state) => {
            if let Err(gone) = lifecycle::teardown(tart, settings, &state, Some(lock)).await {
                eprintln!("warm pool: could not remove the VM: {gone:#}");
            }
            Ok(Booted::NoRoom(
                "Apple's limit is full of macOS VMs this runner did not start".into(),
            ))
        }
        Err(e) => {
            if let Err(gone) = lifecycle::teardown(tart, settings, &state, Some(lock)).await {
                eprintln!("warm pool: could not remove the failed VM: {gone:#}");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn boot(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    state: &VmState,
    request: &Request,
    spec: &WarmSpec,
    slots: crate::host::Slots,
    lock: &std::fs::File,
) -> Result<()> {
    let vm = state.name.as_str();
    let local = fetch_for(settings, request)?.without_credentials();
    // The digest the spec names, not the tag: a pull may re-point the tag meanwhile.
    let source = if spec.digest.starts_with("sha256:") {
        format!("{}@{}", request.image.repository(), spec.digest)
    } else {
        request.image.name.clone()
    };
    tart.clone_vm(&source, vm, &local, Duration::from_secs(3600))
        .await?;
    ownership::mark(&state.name, root)?;
    crate::fault::point("replenish:cloned");
    let info = super::clone::configure(tart, settings, root, request, vm)
        .await
        .map_err(explain)?;
    let mut started_as = spec.clone();
    started_as.cpu = info.cpu;
    started_as.memory_mib = info.memory_mib;
    pool::write_record(state, &started_as)?;
    // From here on a cold macOS job may stop this VM for its slot (`capacity`).
    crate::fault::point("replenish:recorded");
    let nobody = JobContext {
        job_id: 0,
        runner_token: "warm".into(),
        image: None,
        project_id: None,
        job_timeout_secs: None,
    };
    let shares = super::shares::shares(settings, &nobody, vm)?;
    let identity = Identity::create(state)?;
    let run_args = super::clone::run_args(settings, request, &info.os, &shares, &identity);
    let mut fds = slots.raw_fds();
    fds.push(std::os::unix::io::AsRawFd::as_raw_fd(lock));
    // A job that stopped this VM before it ran waits for its lock to delete it: starting
    // `tart run` now would hand that lock to the supervisor and keep the job waiting.
    if record::claimed_by(state).is_some() {
        bail!("a job stopped it before it started");
    }
    supervisor::start(state, tart.exe(), &run_args, fds)?;
    drop(slots);
    crate::fault::point("replenish:started");
    let resolver = if settings.bridged.is_some() {
        "arp"
    } else {
        "dhcp"
    };
    let deadline = crate::clock::deadline_after(request.boot_timeout);
    let conn = super::connect::connect(
        tart, state, request, &identity, &info.os, resolver, deadline,
    )
    .await
    .map_err(explain)?;
    // The login proved the VM ready; the job opens its own.
    if conn.transport == crate::model::TransportKind::Ssh {
        crate::guest::transport::ssh::close_master(state).await?;
    }
    state.forget_connection()?;
    crate::fault::point("replenish:answered");
    // Before a job may claim it: from then on its lease is known to be this runner's.
    super::clone::remember_lease(root, vm);
    pool::mark_ready(state)?;
    crate::fault::point("replenish:ready");
    Ok(())
}

/// A stage's failure as an error for the pool's log.
fn explain(failure: Failure) -> anyhow::Error {
    match failure {
        Failure::Build(code) => anyhow!("exited with status {code}"),
        Failure::Rejected(e) | Failure::System(e) => e,
    }
}

/// Memory available to new VMs, MiB.
fn available_mib() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.available_memory() / 1024 / 1024
}
