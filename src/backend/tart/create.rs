//! Making a local Tart VM for a job: the image fetched under the pull policy, cloned and
//! sized, its host directories chosen, `tart run` started by the supervisor in a slot, and
//! the boot waited for until the job's connection is open.

use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::clone::{configure, run_args};
use super::connect;
use super::LocalTart;
use crate::backend::types::{Made, NewVm};
use crate::failure::Failure;
use crate::guest::identity::Identity;
use crate::host::foreign;
use crate::host::ownership;
use crate::host::registry_policy::CredentialFreeHome;
use crate::host::state_dir::StateDir;
use crate::host::supervisor;
use crate::host::tart::Fetch;
use crate::host::tart_home;
use crate::host::vm::VmName;
use crate::job::registry_access;
use crate::logging::phase_done;

impl LocalTart<'_> {
    /// Replaces a leftover of an earlier attempt, fetches and clones the image, sizes the
    /// clone, starts it in a slot and waits until the job's connection is open. Before
    /// `tart run` it makes only the Tart calls the VM needs (what it can, it reads from
    /// Tart's home); the sweep of orphaned VMs runs once `tart run` is started.
    pub async fn create(&self, new: NewVm<'_>) -> Result<Made, Failure> {
        let NewVm {
            job,
            request,
            root,
            state,
            lock,
            job_limit,
        } = new;
        let started = Instant::now();
        let (tart, settings) = (&self.tart, self.settings);
        let vm = &state.name;
        let home = tart_home::home().ok_or_else(|| {
            anyhow!("cannot find Tart's home: TART_HOME is not set and the user database has no home for this user; set TART_HOME")
        })?;
        // A leftover of an earlier attempt: its processes are gone (we hold the lock).
        if tart_home::vm_exists(&home, vm.as_str()) {
            tart.delete(vm.as_str()).await?;
        }
        let fetch = Fetch {
            creds: request.registry.clone(),
            home: CredentialFreeHome::for_host(&settings.registry, &settings.state_dir)?,
            insecure: settings.insecure_pull,
            concurrency: settings.pull_concurrency,
            auto_prune: settings.auto_prune,
        };
        let t = Instant::now();
        let fetched = registry_access::fetch_image(
            tart,
            root,
            &settings.registry,
            &request.image,
            request.pull_policy,
            &fetch,
            job_limit,
            &home,
        )
        .await?;
        if fetched.pulled {
            phase_done(&format!("Pulled {}", request.image.name), t);
            state.record_phase("pull", t.elapsed());
        }
        let source = fetched.source;
        crate::fault::point("prepare:image-approved");
        let mut vet = fetched.vet;
        if settings.warm.enabled() {
            // A claimed warm VM is the job's at once: the registry decides before the claim.
            if let Some(vet) = vet.take() {
                vet.run().await?;
            }
        }

        // The boot timeout bounds the job's whole wait for a booted VM: the time spent on a
        // warm VM (waiting for its boot, logging in) is taken from the cold boot after it.
        // A wait for a free job slot is not (the claim moves the deadline later by it), as
        // the cold path below starts its boot timeout once it holds its slots.
        let mut boot_deadline = crate::clock::deadline_after(request.boot_timeout);
        // Orphans are swept beside the VM's boot (or the claimed VM's login), once.
        let mut sweep = Some(self.sweep_orphans(root, vm));
        if let Some(claimed) = super::claimed::try_warm(
            settings,
            root,
            request,
            &source,
            state,
            job_limit,
            &mut boot_deadline,
        )
        .await?
        {
            let connecting = super::claimed::connect_claimed(
                tart,
                settings,
                job,
                request,
                &claimed,
                boot_deadline,
            );
            let connected = match sweep.take() {
                Some(sweep) => tokio::join!(connecting, sweep).0,
                None => connecting.await,
            };
            match connected {
                Ok((conn, shares)) => {
                    return Ok(Made {
                        state: claimed.state,
                        conn,
                        shares,
                        held: lock,
                    })
                }
                // The host's or the VM's failure: a VM of the job's own may well work. A
                // failure that is the job's (its login settings) would repeat there.
                Err(Failure::System(e)) => {
                    eprintln!(
                        "The claimed warm VM did not let this job in ({e:#}); removing it and booting a fresh one"
                    );
                    super::claimed::give_up(tart, settings, state, claimed).await?;
                }
                Err(e) => {
                    super::claimed::give_up(tart, settings, state, claimed).await?;
                    return Err(e);
                }
            }
        }
        let boot_timeout = if settings.warm.enabled() {
            boot_deadline.saturating_duration_since(Instant::now())
        } else {
            request.boot_timeout
        };

        let t = Instant::now();
        // The image is on this host now (pulled, or cached): the clone needs no login.
        let local = fetch.without_credentials();
        let clone = async {
            tart.clone_vm(&source, vm.as_str(), &local, job_limit)
                .await
                .map_err(|e| {
                    anyhow!(
                        "{e:#}. If the disk is full, run `gitlab-runner-tart-driver gc --state-dir {}` and `tart prune`",
                        root.path().display()
                    )
                })?;
            // From now on the VM exists: mark it as this state directory's, for the sweeps.
            ownership::mark(vm, root)?;
            configure(tart, settings, root, request, vm.as_str()).await
        };
        // The registry's check of a cached image runs beside the clone; nothing of the
        // clone reaches the job before it passes (no `tart run` yet), and a clone it
        // refuses is deleted.
        let vetting = async {
            match vet {
                Some(vet) => vet.run().await,
                None => Ok(()),
            }
        };
        let (vetted, cloned) = tokio::join!(vetting, clone);
        if let Err(refused) = vetted {
            if tart_home::vm_exists(&home, vm.as_str()) {
                if let Err(e) = tart.delete(vm.as_str()).await {
                    eprintln!("WARNING: could not delete the clone of a refused image: {e:#}");
                }
            }
            return Err(refused);
        }
        let info = cloned?;
        phase_done(
            &format!(
                "Cloned {} ({} guest, {} CPUs, {} MiB)",
                request.image.name, info.os, info.cpu, info.memory_mib
            ),
            t,
        );
        state.record_phase("clone", t.elapsed());

        let shares = super::shares::shares(settings, job, &vm.to_string())?;
        if request.nested && info.os != "linux" {
            eprintln!(
                "Nested virtualization (--nested, TART_EXECUTOR_NESTED) ignored: Tart offers it to Linux guests only, and refuses to start a {} guest with it",
                info.os
            );
        }
        let identity = Identity::create(state)?;
        let run_args = run_args(settings, request, &info.os, &shares, &identity);

        // Our own hold on the VM's lock lasts until prepare ends. When `tart run` dies at once,
        // the supervisor lets go of it; a concurrent job's sweep would then take the VM for an
        // orphan and delete it with its state, including how `tart run` ended, and this prepare
        // would wait out the whole boot timeout instead of reporting Tart's message.
        let lock_fd = std::os::unix::io::AsRawFd::as_raw_fd(&lock);
        let resolver = if settings.bridged.is_some() {
            "arp"
        } else {
            "dhcp"
        };
        let macos = info.os != "linux";
        let slot_deadline = crate::clock::deadline_after(job_limit);
        let mut at_limit = foreign::LimitWait::new(started, job_limit);
        let (conn, t) = loop {
            let t = Instant::now();
            let slots =
                super::capacity::acquire_for_job(tart, settings, root, macos, slot_deadline)
                    .await?;
            if t.elapsed() > Duration::from_millis(500) {
                phase_done("Got a VM slot", t);
            }
            state.record_phase("waiting for a slot", t.elapsed());
            let t = Instant::now();
            let mut fds = slots.raw_fds();
            fds.push(lock_fd);
            supervisor::start(state, tart.exe(), &run_args, fds)?;
            drop(slots);
            let deadline = crate::clock::deadline_after(boot_timeout);
            let connecting = connect::connect(
                tart, state, request, &identity, &info.os, resolver, deadline,
            );
            // The sweep of orphans runs beside the first boot: `tart run` is already started.
            let connected = match sweep.take() {
                Some(sweep) => tokio::join!(connecting, sweep).0,
                None => connecting.await,
            };
            match connected {
                Ok(conn) => break (conn, t),
                // Apple's limit is full of macOS VMs this driver did not start: wait for them
                // as for a slot, then start the same VM again.
                Err(_) if macos && foreign::hit_the_limit(state) => {
                    at_limit.next(
                        state,
                        foreign::virtualization_vms(),
                        foreign::own_running_vms(),
                    )?;
                    tokio::time::sleep(foreign::RETRY_PAUSE).await;
                    state.forget_run_log()?;
                }
                Err(e) => return Err(e),
            }
        };
        phase_done(
            &format!(
                "VM booted and reachable over {}",
                connect::transport_name(&conn)
            ),
            t,
        );
        state.record_phase("boot and connect", t.elapsed());
        super::clone::remember_lease(root, vm.as_str());
        Ok(Made {
            state: state.clone(),
            conn,
            shares,
            held: lock,
        })
    }
}

impl LocalTart<'_> {
    /// Prepare's sweep of this state directory's orphaned VMs (never `keep`), told to the
    /// job log; it fails no job.
    async fn sweep_orphans(&self, root: &StateDir, keep: &VmName) {
        let swept = match self.list().await {
            Ok(list) => self
                .sweep(&list, root, Some(keep), false)
                .await
                .map(Into::into),
            Err(e) => Err(e),
        };
        crate::backend::types::report_sweep(swept);
    }
}
