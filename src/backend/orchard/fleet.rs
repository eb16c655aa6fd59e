//! The Orchard backend: a job's VM is made by an Orchard controller on whichever Mac of its
//! fleet has room, reached by ssh through the controller's port-forward (the driver's own
//! `orchard-proxy` as ssh's `ProxyCommand`), and deleted on the controller.
//!
//! The host keeps what it keeps for a local VM: the VM's record in the state directory
//! (lock, control socket, connection) under the job's usual name, plus the Orchard VM's name
//! (`orchard-vm`) written before the VM is created, so a cleanup or a sweep after any crash
//! knows what to delete. Before creating, prepare deletes whatever VM of the same job an
//! earlier attempt left on the controller (found by name), so a cleanup whose delete did not
//! get through never blocks the retry.
//!
//! May use: settings, the job's request, VM state, the guest's transports, the controller's
//! client (`crate::orchard`) and the seam's value types. Used by: the backend seam.

use std::collections::BTreeSet;
use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::backend::types::{Made, NewVm, Swept};
use crate::failure::Failure;
use crate::guest::transport::ssh::{self, MasterError, Target};
use crate::guest::transport::Transport;
use crate::host::state_dir::{StateDir, VMS};
use crate::host::vm::{Connection, VmName, VmState};
use crate::job::request::Request;
use crate::model::{PullPolicy, TransportKind};
use crate::orchard::client::{ApiError, Client};
use crate::orchard::identity;
use crate::orchard::queue;
use crate::orchard::settings::{required, OrchardSettings};
use crate::orchard::sweep::{self, unix_now};
use crate::orchard::types::{Vm, VmStatus};
use crate::settings::Settings;

/// The Orchard VM's name, in the job's record.
const ORCHARD_VM: &str = "orchard-vm";
/// How many VMs this job's prepare attempts have asked for, in the job's record.
const ATTEMPTS: &str = "orchard-attempts";
/// Where the `ProxyCommand` writes why a port-forward failed, in the job's record.
const PROXY_LOG: &str = "orchard-proxy.log";
/// How long one login's proxy retries the port-forward: under the master's ConnectTimeout
/// (10 s), which with a ProxyCommand bounds the wait for sshd's banner, so the proxy gives up
/// first and says why in its log. The boot timeout bounds the attempts together.
const LOGIN_TRY: Duration = Duration::from_secs(8);
/// How long run's one reconnect may take.
const RECONNECT_BOUND: Duration = Duration::from_secs(60);

/// An Orchard controller's fleet, as the admin configured it.
pub struct Fleet<'a> {
    settings: &'a Settings,
    orchard: &'a OrchardSettings,
    client: Client,
}

impl<'a> Fleet<'a> {
    pub fn new(settings: &'a Settings) -> Result<Fleet<'a>> {
        let orchard = required(settings.orchard.as_ref())?;
        refuse_local_only(settings)?;
        Ok(Fleet {
            settings,
            orchard,
            client: Client::new(orchard)?,
        })
    }

    /// Every VM on the controller (there is no filter but the worker, §1.6).
    pub async fn list(&self) -> Result<Vec<Vm>> {
        Ok(self.client.list_vms().await?)
    }

    /// Deletes this runner's VMs that are `failed` or older than `--orchard-max-vm-age`, and
    /// the VMs and records of this runner's jobs whose driver is long gone; never a VM a
    /// live job holds. "This runner" is the job `keep`'s runner; for `gc` (no job), every
    /// runner that made VMs from this state directory.
    pub async fn sweep(
        &self,
        list: &[Vm],
        root: &StateDir,
        keep: Option<&VmName>,
        dry_run: bool,
    ) -> Result<Swept> {
        let prefix = &self.orchard.name_prefix;
        let runner = keep.and_then(|k| k.runner_and_job()).map(|(r, _)| r);
        let tags = match runner {
            Some(runner) => vec![identity::runner_tag(root, prefix, runner)?],
            None => identity::registered(root, prefix)?,
        };
        let mut live = live_vms(root)?;
        live.extend(keep.and_then(|k| recorded_vm(&VmState::new(root, k))));
        let doomed = sweep::stale(list, &tags, self.orchard.max_vm_age, unix_now(), &live);
        // One bound for the whole sweep: a controller that is down costs it once.
        let deadline = Instant::now() + sweep::DELETE_BOUND;
        let mut removed = sweep::remove(&self.client, &doomed, dry_run, deadline).await?;
        // Records of jobs whose driver died: their master (and its proxy) may still run.
        if let Some(vms) = root.existing_subdir(VMS)? {
            for entry in vms.entries() {
                let Some(name) = VmName::parse_ours(&entry).filter(|n| Some(n) != keep) else {
                    continue;
                };
                let theirs = name.runner_and_job().map(|(r, _)| r);
                if runner.is_some() && theirs != runner {
                    continue;
                }
                let state = VmState::new(root, &name);
                if !state.expired() {
                    continue;
                }
                if let Some(lock) = state.lock_now()? {
                    let vm = recorded_vm(&state);
                    if !dry_run {
                        self.destroy_until(&state, Some(lock), deadline).await?;
                    }
                    removed.extend(vm);
                }
            }
        }
        removed.sort();
        removed.dedup();
        Ok(Swept {
            removed,
            foreign: Vec::new(),
        })
    }

    /// Creates the job's VM, waits for a worker to run it, then opens the job's
    /// ControlMaster through the controller. Whatever fails after the create deletes the VM.
    pub async fn create(&self, list: &[Vm], new: NewVm<'_>) -> Result<Made, Failure> {
        if new.request.pull_policy == PullPolicy::Never {
            return Err(Failure::rejected("TART_PULL_POLICY=never cannot be honoured on Orchard: a worker pulls an image it lacks as it clones it; use if-not-present or always"));
        }
        super::images::check(
            &self.settings.registry,
            &new.request.image,
            new.request.registry.is_some(),
        )?;
        // The sweep takes VMs older than this once their job's record is gone or expired: a
        // job that may run longer is refused before anything exists.
        if new.job_limit > self.orchard.max_vm_age {
            return Err(Failure::rejected(format!(
                "the job's timeout ({}s) is longer than --orchard-max-vm-age ({}s), after which a sweep may delete its VM: shorten the job's timeout, or raise --orchard-max-vm-age (YAML orchard.max_vm_age) above the longest job timeout",
                new.job_limit.as_secs(),
                self.orchard.max_vm_age.as_secs()
            )));
        }
        let tag = identity::register(new.root, &self.orchard.name_prefix, &new.job.runner_token)?;
        let record = new.state.create()?;
        let attempt = record
            .read_string(ATTEMPTS)
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        record.write_atomic(ATTEMPTS, attempt.to_string().as_bytes())?;
        let name = tag.vm_name(new.job.job_id, attempt).to_string();
        // Written before the VM exists: a crash from here on leaves its name behind.
        record.write_atomic(ORCHARD_VM, name.as_bytes())?;
        record.remove(PROXY_LOG)?;
        // An earlier attempt's VM (its cleanup may not have reached the controller).
        for leftover in sweep::of_job(list, &tag, new.job.job_id, None) {
            sweep::delete(&self.client, &leftover.name).await?;
        }
        let spec = super::spec::for_job(&name, new.request, self.settings, self.orchard);
        eprintln!(
            "Creating VM {name} from {} on the Orchard controller {}",
            new.request.image.name, self.orchard.url
        );
        self.create_once(&spec).await?;
        match self.boot(&name, &new).await {
            Ok(conn) => Ok(Made {
                state: new.state.clone(),
                conn,
                shares: Vec::new(),
                held: new.lock,
            }),
            Err(e) => {
                if let Err(gone) = sweep::delete(&self.client, &name).await {
                    eprintln!("WARNING: {gone:#}");
                }
                Err(e)
            }
        }
    }

    /// `POST /v1/vms`. An answer lost on the way may hide a VM that was made: look.
    async fn create_once(&self, spec: &crate::orchard::types::VmSpec) -> Result<(), Failure> {
        match self.client.create_vm(spec).await {
            Ok(_) => Ok(()),
            Err(ApiError::Network(why)) => match self.client.get_vm(&spec.name).await {
                Ok(_) => Ok(()),
                Err(_) => Err(anyhow!("cannot create the job's VM: {why}").into()),
            },
            Err(e) => Err(queue::create_refused(&e, &spec.image).into()),
        }
    }

    /// From `pending` to an open ControlMaster.
    async fn boot(&self, name: &str, new: &NewVm<'_>) -> Result<Connection, Failure> {
        let t = Instant::now();
        let queue_limit = self.orchard.queue_timeout.min(new.job_limit);
        let vm = match queue::until_running(&self.client, name, queue_limit).await {
            Ok(vm) => vm,
            // Not a system failure: gitlab-runner would retry prepare twice more, each
            // attempt a new VM at the back of the queue, tripling the wait the admin set.
            Err(e @ queue::NotRunning::TimedOut { .. }) => return Err(Failure::rejected(e)),
            Err(e) => return Err(anyhow!("{e}").into()),
        };
        crate::logging::phase_done(&format!("VM {name} running on worker {}", vm.worker), t);
        new.state.record_phase("queue", t.elapsed());

        let t = Instant::now();
        let limit = self
            .orchard
            .boot_timeout
            .unwrap_or(new.request.boot_timeout);
        self.open_master(name, new.state, new.request, limit)
            .await
            .map_err(Failure::System)?;
        crate::logging::phase_done("VM reachable over SSH through the Orchard controller", t);
        new.state.record_phase("boot and connect", t.elapsed());
        Ok(Connection {
            transport: TransportKind::Ssh,
            os: if vm.os.is_empty() {
                "darwin".into()
            } else {
                vm.os
            },
            shell: new.request.shell.clone(),
            ip: None,
            user: Some(new.request.user.clone()),
            env: new.request.guest_env(),
        })
    }

    /// Logs in through the controller until sshd answers or `limit` passes: `running` only
    /// means the worker is starting `tart run`, and macOS takes a while to boot.
    async fn open_master(
        &self,
        name: &str,
        state: &VmState,
        request: &Request,
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        let exe = std::env::current_exe().context("cannot find this driver's executable")?;
        let log = state.dir.join(PROXY_LOG);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let command = format!(
                "{} 2>>{}",
                crate::orchard::proxy::command(&exe, self.orchard, name, left.min(LOGIN_TRY)),
                crate::guest::quote(&log.display().to_string()).replace('%', "%%")
            );
            let target = Target::Proxy {
                name: name.to_string(),
                command,
            };
            let why = match ssh::start_master(state, &target, &request.user, &request.auth).await {
                Ok(()) => return Ok(()),
                Err(MasterError::Broken(reason)) => bail!(reason),
                Err(MasterError::Refused(reason)) => {
                    bail!(ssh::describe_refusal(&request.user, name, &reason))
                }
                Err(MasterError::NotYet(reason)) => reason,
            };
            // The controller's word on why beats ssh's "connection closed".
            let why = last_line(state, PROXY_LOG).unwrap_or(why);
            match self.client.get_vm(name).await {
                Ok(vm) if vm.status == VmStatus::Failed => bail!(
                    "Orchard failed the VM on worker {} while it booted: {}",
                    vm.worker,
                    vm.status_message
                ),
                Err(ApiError::NotFound) => {
                    bail!("the VM was deleted on the controller while it booted")
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "SSH through the Orchard controller did not answer within the boot timeout ({}s): {why}. Is Remote Login on in the image, and are the guest's user and password right?",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The job's transport for a run stage. A master that is gone (a controller restart or a
    /// cut WebSocket between stages) is opened again, once; the stage runs only on a live one.
    pub async fn transport(&self, _conn: &Connection, state: &VmState) -> Result<Transport> {
        if !ssh::master_answers(state).await {
            // The job's login (user, password) as prepare had it.
            let job = crate::job::JobContext::from_env(self.settings).map_err(failure_text)?;
            let request = Request::resolve(self.settings, &job).map_err(failure_text)?;
            let name = recorded_vm(state)
                .context("the job's VM is not recorded: prepare did not finish")?;
            eprintln!("The job's SSH connection through the Orchard controller is gone (a controller restart or a cut connection): reconnecting once...");
            match self.client.get_vm(&name).await {
                Ok(vm) if vm.status == VmStatus::Running => {}
                Ok(vm) => bail!(
                    "the job's VM {name} is no longer running on the controller: {}",
                    vm.status_message
                ),
                Err(ApiError::NotFound) => bail!("the job's VM {name} is gone from the controller"),
                Err(e) => return Err(anyhow!(e).context("reconnecting to the job's VM")),
            }
            self.open_master(&name, state, &request, RECONNECT_BOUND)
                .await
                .context("reconnecting to the job's VM through the Orchard controller failed")?;
            eprintln!("Reconnected to VM {name}");
        }
        // Always SSH: Tart's guest agent is on the worker, out of this host's reach.
        Ok(Transport::Ssh(ssh::SshTransport::attach(state)?))
    }

    /// Closes the master, deletes the job's VM (every attempt's), removes the record.
    /// Idempotent: a VM or record already gone is fine.
    pub async fn destroy(&self, state: &VmState, held: Option<File>) -> Result<()> {
        let deadline = Instant::now() + sweep::DELETE_BOUND;
        self.destroy_until(state, held, deadline).await
    }

    /// [`Fleet::destroy`] with one deadline for all of the job's deletes.
    async fn destroy_until(
        &self,
        state: &VmState,
        held: Option<File>,
        deadline: Instant,
    ) -> Result<()> {
        ssh::close_master(state).await?;
        let mut names: Vec<String> = recorded_vm(state).into_iter().collect();
        // Earlier attempts whose name the record no longer holds.
        if let Some((runner, job)) = state.name.runner_and_job() {
            let root = StateDir::open(&self.settings.state_dir)?;
            let tag = identity::runner_tag(&root, &self.orchard.name_prefix, runner)?;
            match self.client.list_vms().await {
                Ok(all) => names.extend(
                    sweep::of_job(&all, &tag, job, None)
                        .into_iter()
                        .map(|v| v.name.clone()),
                ),
                Err(e) => eprintln!("WARNING: cannot list the controller's VMs: {e}"),
            }
        }
        names.sort();
        names.dedup();
        let mut failed = None;
        for name in &names {
            if let Err(e) = sweep::delete_until(&self.client, name, deadline).await {
                failed.get_or_insert(e);
            }
        }
        // The record goes even so: a VM the controller would not delete now carries this
        // runner's name, and the controller-side sweep finds it once it fails or ages out.
        if state.exists() {
            state.remove()?;
        }
        drop(held);
        failed.map_or(Ok(()), Err)
    }

    pub async fn prune_images(&self, _days: u32) -> Result<()> {
        bail!("images live on the Orchard workers, not on this host: prune them on each Mac (`tart prune --entries caches --older-than DAYS`)")
    }
}

fn failure_text(f: Failure) -> anyhow::Error {
    match f {
        Failure::System(e) | Failure::Rejected(e) => e,
        Failure::Build(code) => anyhow!("exit code {code}"),
    }
}

/// Settings that only make sense on this host. Per-job writable host directories cannot
/// exist on a fleet: the job's worker is not known in advance, Orchard cannot create or clean
/// directories there, and two VMs on one Mac would share them (spec/orchard.md §2.6, §7.5).
/// A warm pool would boot VMs here.
fn refuse_local_only(settings: &Settings) -> Result<()> {
    if settings.pull_policy == PullPolicy::Never {
        bail!("--pull-policy never: Orchard workers pull an image they lack as they clone it (Orchard has no `never`): use if-not-present, and pre-pull images on the workers to avoid pulls");
    }
    let (what, flag) = if settings.builds_dir.is_some() {
        ("builds", "--builds-dir")
    } else if settings.cache_dir.is_some() {
        ("cache", "--cache-dir")
    } else if !settings.volumes.is_empty() {
        ("volume", "--volume")
    } else if settings.warm.enabled() {
        bail!("--warm-pool: a warm pool boots VMs on this host, which --backend orchard does not use: remove it (Orchard workers pull and clone on their own)");
    } else {
        return Ok(());
    };
    bail!("{flag}: host {what} directories do not work with --backend orchard (jobs run on other Macs): remove it; builds and caches live in the VM (use GitLab's distributed cache), and read-only worker directories go in --orchard-host-dir")
}

/// The Orchard VM name the job's record holds.
fn recorded_vm(state: &VmState) -> Option<String> {
    let name = state.record().ok()??.read_string(ORCHARD_VM)?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn last_line(state: &VmState, file: &str) -> Option<String> {
    let text = state.record().ok()??.read_string(file)?;
    text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| {
        l.trim()
            .trim_start_matches("ERROR: orchard-proxy failed: ")
            .to_string()
    })
}

/// The Orchard VMs that jobs of this state directory still hold: their record's lock is
/// held (a prepare, a cleanup), or their job's time is not up (between stages no lock is
/// held, and a script may run for the whole job timeout).
fn live_vms(root: &StateDir) -> Result<BTreeSet<String>> {
    let mut live = BTreeSet::new();
    let Some(vms) = root.existing_subdir(VMS)? else {
        return Ok(live);
    };
    for entry in vms.entries() {
        let Some(name) = VmName::parse_ours(&entry) else {
            continue;
        };
        let state = VmState::new(root, &name);
        if !state.expired() || !state.lock_is_free() {
            live.extend(recorded_vm(&state));
        }
    }
    Ok(live)
}
