//! The scheduler and the in-process workers (spec/orchard.md §2).
//!
//! The scheduler places pending VMs in `createdAt` order on the first online, unpaused worker
//! whose arch, runtime, labels and free resources fit. A worker is online while its last
//! heartbeat is within the offline timeout; a vanished worker stops heartbeating, and once
//! it is offline its VMs fail. A Tart worker then does what a real one does with a VM:
//! `tart pull` (policy `Always`), `tart clone`, `tart set`, mark it `running` (before
//! `tart run` starts: `running` is not "SSH ready"), `tart run`, and on deletion
//! `tart stop` and `tart delete`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::watch;

use crate::model::{rfc3339_now, Vm};
use crate::{Shared, TartEnv, VmRecord, WorkerSpec};

const LOST_CONNECTION: &str = "VM is assigned to a worker that lost connection with the controller";

pub async fn scheduler(s: Arc<Shared>) {
    let interval = Duration::from_millis(s.cfg.scheduler_interval_ms.max(10));
    let mut shutdown = s.shutdown.subscribe();
    loop {
        schedule_once(&s);
        tokio::select! {
            _ = s.poke.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Heartbeats, offline detection, then one placement pass.
fn schedule_once(s: &Arc<Shared>) {
    let faults = s.faults();
    let offline_after = Duration::from_millis(s.cfg.worker_offline_timeout_ms);
    let mut state = s.state.lock().unwrap();
    let now = Instant::now();
    let mut offline = Vec::new();
    for (name, w) in state.workers.iter_mut() {
        if !w.vanished {
            w.last_seen = now;
            w.worker.last_seen = rfc3339_now();
        } else if now.duration_since(w.last_seen) > offline_after {
            offline.push(name.clone());
        }
    }
    let mut changed = false;
    for rec in state.vms.values_mut() {
        if offline.contains(&rec.vm.worker) && rec.vm.status != "failed" {
            rec.vm.status = "failed".into();
            rec.vm.status_message = LOST_CONNECTION.into();
            rec.vm.set_condition("running", false);
            changed = true;
        }
    }
    if !faults.pending_forever {
        let mut pending: Vec<(String, String)> = state
            .vms
            .values()
            .filter(|r| r.vm.status == "pending" && r.vm.worker.is_empty())
            .map(|r| (r.vm.created_at.clone(), r.vm.name.clone()))
            .collect();
        pending.sort();
        for (_, name) in pending {
            let vm = state.vms[&name].vm.clone();
            let Some(worker) = pick_worker(&state, &vm, &offline) else {
                continue; // a later, smaller VM may still fit somewhere
            };
            let w = &state.workers[&worker];
            let (spec, vanished) = (w.spec.clone(), w.vanished);
            let default_cpu = w.worker.default_cpu;
            let default_memory = w.worker.default_memory;
            let rec = state.vms.get_mut(&name).expect("listed above");
            rec.vm.worker = worker;
            rec.vm.scheduled_at = rfc3339_now();
            rec.vm.set_condition("scheduled", true);
            rec.vm.assigned_cpu = if vm.cpu == 0 { default_cpu } else { vm.cpu };
            rec.vm.assigned_memory = if vm.memory == 0 {
                default_memory
            } else {
                vm.memory
            };
            changed = true;
            if vanished {
                continue; // the worker never syncs, so the VM stays pending there
            }
            let (alive, alive_rx) = watch::channel(());
            rec.alive = Some(alive);
            let task = tokio::spawn(run_vm(s.clone(), rec.vm.clone(), spec, alive_rx));
            s.tasks.lock().unwrap().push(task);
        }
    }
    drop(state);
    if changed {
        s.bump();
    }
}

/// The busiest fitting worker first (Orchard's default `optimize-utilization` profile).
fn pick_worker(state: &crate::State, vm: &Vm, offline: &[String]) -> Option<String> {
    let mut fits: Vec<(u64, String)> = Vec::new();
    for (name, w) in &state.workers {
        let online = !offline.contains(name);
        let matches = w.worker.arch == vm.arch
            && w.worker.runtime == vm.runtime
            && !w.worker.scheduling_paused
            && vm
                .labels
                .iter()
                .all(|(k, v)| w.worker.labels.get(k) == Some(v));
        if !online || !matches {
            continue;
        }
        let used = |key: &str| -> u64 {
            state
                .vms
                .values()
                .filter(|r| &r.vm.worker == name && r.vm.status != "failed")
                .map(|r| r.vm.resources.get(key).copied().unwrap_or(0))
                .sum()
        };
        let fit = vm.resources.iter().all(|(key, want)| {
            let have = w.worker.resources.get(key).copied().unwrap_or(0);
            used(key) + want <= have
        });
        if fit {
            let busy = state.vms.values().filter(|r| &r.vm.worker == name).count() as u64;
            fits.push((busy, name.clone()));
        }
    }
    fits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    fits.into_iter().next().map(|(_, n)| n)
}

/// Applies `f` to the VM record if it still is the same VM (same uid); false if it was
/// deleted (or deleted and created again under the same name).
fn update(s: &Shared, vm: &Vm, f: impl FnOnce(&mut VmRecord)) -> bool {
    let mut state = s.state.lock().unwrap();
    let Some(rec) = state.vms.get_mut(&vm.name).filter(|r| r.vm.uid == vm.uid) else {
        return false;
    };
    f(rec);
    drop(state);
    s.bump();
    true
}

fn set_message(s: &Shared, vm: &Vm, text: &str) -> bool {
    update(s, vm, |r| r.vm.status_message = text.into())
}

fn fail(s: &Shared, vm: &Vm, text: &str) {
    update(s, vm, |r| {
        r.vm.status = "failed".into();
        r.vm.status_message = text.into();
        r.vm.set_condition("running", false);
    });
}

fn mark_running(s: &Shared, vm: &Vm) -> bool {
    update(s, vm, |r| {
        r.vm.status = "running".into();
        r.vm.status_message = "VM started".into();
        r.vm.started_at = rfc3339_now();
        r.vm.set_condition("running", true);
        r.running_since = Some(Instant::now());
    })
}

/// The Tart VM name a worker gives an Orchard VM.
pub fn local_name(vm: &Vm) -> String {
    format!("orchard-{}-{}-{}", vm.name, vm.uid, vm.restart_count)
}

async fn run_vm(s: Arc<Shared>, vm: Vm, spec: WorkerSpec, mut alive: watch::Receiver<()>) {
    let local = local_name(&vm);
    if !update(&s, &vm, |r| {
        r.vm.local_name = local.clone();
        r.vm.tart_name = local.clone();
    }) {
        return;
    }
    if let Some(text) = s.faults().fail_vms_with {
        fail(&s, &vm, &text);
        return;
    }
    let Some(tart) = spec.tart else {
        // Synthetic: a short "clone", then running until deleted.
        set_message(&s, &vm, "cloning VM...");
        tokio::time::sleep(Duration::from_millis(spec.synthetic_boot_ms)).await;
        if mark_running(&s, &vm) {
            let _ = alive.changed().await;
        }
        return;
    };
    let result = boot(&s, &vm, &tart, &local, &mut alive).await;
    if let Err(text) = result {
        fail(&s, &vm, &text);
        let _ = alive.changed().await; // a failed VM keeps its clone until deleted
    }
    let _ = tart_cmd(&tart, &["stop", &local, "--timeout", "5"], 30).await;
    let _ = tart_cmd(&tart, &["delete", &local], 60).await;
}

/// Pull, clone, configure and run; returns when the VM is deleted (Ok) or failed (Err with
/// the worker's status message).
async fn boot(
    s: &Shared,
    vm: &Vm,
    tart: &TartEnv,
    local: &str,
    alive: &mut watch::Receiver<()>,
) -> Result<(), String> {
    if vm.image_pull_policy == "Always" {
        set_message(s, vm, "pulling VM image...");
        tart_cmd(tart, &["pull", &vm.image], 600)
            .await
            .map_err(|e| format!("failed to pull the VM: tart command failed: {e:?}"))?;
    }
    if !set_message(s, vm, "cloning VM...") {
        return Ok(());
    }
    tart_cmd(tart, &["clone", &vm.image, local], 600)
        .await
        .map_err(|e| format!("failed to clone the VM: tart command failed: {e:?}"))?;
    if !set_message(s, vm, "configuring VM...") {
        return Ok(());
    }
    let rec = s
        .state
        .lock()
        .unwrap()
        .vms
        .get(&vm.name)
        .map(|r| r.vm.clone());
    let Some(current) = rec else { return Ok(()) };
    let mut set = vec![
        "set".to_string(),
        local.to_string(),
        "--cpu".into(),
        current.assigned_cpu.to_string(),
        "--memory".into(),
        current.assigned_memory.to_string(),
    ];
    if vm.disk_size > 0 {
        set.extend(["--disk-size".into(), vm.disk_size.to_string()]);
    }
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    tart_cmd(tart, &set, 60)
        .await
        .map_err(|e| format!("failed to configure the VM: tart command failed: {e:?}"))?;
    // Orchard reports the VM started before `tart run` has even begun.
    if !mark_running(s, vm) {
        return Ok(());
    }
    let args = run_args(vm, local);
    s.state.lock().unwrap().tart_runs.push(args.clone());
    let mut run = Command::new(&tart.tart);
    run.args(&args)
        .envs(tart.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = run
        .spawn()
        .map_err(|e| format!("VM failed: cannot start tart run: {e}"))?;
    tokio::select! {
        _ = child.wait() => Err("VM failed: VM exited unexpectedly".into()),
        _ = alive.changed() => Ok(()),
    }
}

/// `tart run`'s arguments for `vm`, as Orchard's Tart worker builds them
/// (internal/worker/vmmanager/tart/tart.go): either Softnet field turns Softnet on, the allow
/// and block lists are passed as given. Always headless: the simulated Mac has no display.
fn run_args(vm: &Vm, local: &str) -> Vec<String> {
    let mut args = vec!["run".to_string()];
    if vm.net_softnet || vm.net_softnet_deprecated {
        args.push("--net-softnet".into());
    }
    if !vm.net_softnet_allow.is_empty() {
        args.extend(["--net-softnet-allow".into(), vm.net_softnet_allow.join(",")]);
    }
    if !vm.net_softnet_block.is_empty() {
        args.extend(["--net-softnet-block".into(), vm.net_softnet_block.join(",")]);
    }
    args.extend(["--no-graphics".into(), local.to_string()]);
    args
}

/// Runs `tart args` for a worker within `limit_secs`; the error is tart's stderr.
pub async fn tart_cmd(tart: &TartEnv, args: &[&str], limit_secs: u64) -> Result<String, String> {
    let mut cmd = Command::new(&tart.tart);
    cmd.args(args)
        .envs(tart.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(limit_secs), cmd.output())
        .await
        .map_err(|_| format!("tart {} timed out", args.join(" ")))?
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&tart.tart).display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Ends every VM (which stops and deletes its Tart VM) and waits for the workers' tasks.
pub async fn shut_down(s: Arc<Shared>) {
    let records: Vec<VmRecord> = {
        let mut state = s.state.lock().unwrap();
        std::mem::take(&mut state.vms).into_values().collect()
    };
    drop(records);
    let tasks: Vec<_> = std::mem::take(&mut *s.tasks.lock().unwrap());
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(90), task).await;
    }
}
