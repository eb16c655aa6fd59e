//! orchard-sim: a fake Orchard controller for test beds, written to `spec/orchard.md`.
//!
//! It serves Orchard's REST API (HTTP Basic auth with service accounts and roles, VMs,
//! workers, events, controller info) and the port-forward WebSocket, with the controller's
//! status codes and error bodies. Its workers live in the same process: a *Tart* worker
//! drives the Tart simulator's `tart` binary exactly as a real worker drives Tart (`clone`,
//! `set`, `run`, `ip`, `stop`, `delete`), so a port-forward reaches a real OpenSSH guest; a
//! *synthetic* worker, like Orchard's own, forwards every port to a built-in echo server and
//! needs neither root nor sshd.
//!
//! Fault knobs ([`Faults`], [`Sim::restart`], [`Sim::cut_port_forwards`],
//! [`Sim::vanish_worker`]) reproduce what a fleet does to a client: VMs that stay pending or
//! fail, 408/500/503 from port-forward, WebSockets cut mid-stream, a controller restart,
//! slow sshd after `running`, a worker that goes away.

// Handlers return early with the controller's response as the error value; boxing every
// axum Response to please this lint would only add noise.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
pub mod model;
mod portforward;
mod server;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

pub use auth::{Account, ALL_ROLES};
pub use model::{Event, Vm, Worker};

/// What the controller is started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `127.0.0.1:0` picks a free port.
    pub listen: String,
    /// Serve HTTPS with a fresh self-signed certificate (as `orchard controller run` does on
    /// first start); else plain HTTP (`--insecure-no-tls`).
    pub tls: bool,
    /// `--api-prefix`: everything moves under `<prefix>/v1/...`.
    pub api_prefix: String,
    pub accounts: Vec<Account>,
    pub workers: Vec<WorkerSpec>,
    /// Cluster setting `hostDirPolicies`: `{pathPrefix, ro}`; empty allows no hostDirs.
    pub host_dir_policies: Vec<HostDirPolicy>,
    /// How often the scheduler runs besides right after a create (Orchard: 5 s).
    pub scheduler_interval_ms: u64,
    /// `--worker-offline-timeout` (Orchard: 3 min).
    pub worker_offline_timeout_ms: u64,
    /// How often port-forward WebSockets are pinged (Orchard: 30 s, at least 5 s).
    pub ping_interval_ms: u64,
    pub faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:0".into(),
            tls: true,
            api_prefix: String::new(),
            accounts: Vec::new(),
            workers: Vec::new(),
            host_dir_policies: Vec::new(),
            scheduler_interval_ms: 5000,
            worker_offline_timeout_ms: 180_000,
            ping_interval_ms: 30_000,
            faults: Faults::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostDirPolicy {
    #[serde(rename = "pathPrefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub ro: bool,
}

/// One worker (one Mac) of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Advertised resources; `org.cirruslabs.tart-vms` defaults to 2.
    pub resources: BTreeMap<String, u64>,
    /// `None`: a synthetic worker (VMs run after `synthetic_boot_ms`, ports echo).
    pub tart: Option<TartEnv>,
    pub synthetic_boot_ms: u64,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            name: "worker-1".into(),
            labels: BTreeMap::new(),
            resources: BTreeMap::new(),
            tart: None,
            synthetic_boot_ms: 200,
        }
    }
}

/// How a Tart worker runs `tart`: the executable and the environment of its simulated Mac
/// (`TART_HOME`, `TART_SIM_HOST`, `PATH`, as `harness::sim::SimHost::env` gives them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TartEnv {
    pub tart: PathBuf,
    pub env: Vec<(String, String)>,
}

/// Fault knobs. Changing them affects requests and VMs from then on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The scheduler places nothing: every VM stays `pending`.
    pub pending_forever: bool,
    /// A VM fails with this `status_message` as soon as its worker takes it.
    pub fail_vms_with: Option<String>,
    /// The next port-forward requests answer these codes (408, 500 or 503), one each, in
    /// order, after authentication and before anything else.
    pub port_forward_errors: Vec<u16>,
    /// A port-forward WebSocket is cut (no close frame) after carrying this many bytes
    /// from the VM to the client.
    pub cut_after_bytes: Option<u64>,
    /// `DELETE /v1/vms/{name}` answers this status with an empty body (500: the
    /// controller's store failing) and deletes nothing, while set.
    pub delete_fails_with: Option<u16>,
    /// sshd (any VM port) accepts connections only this long after the VM is `running`;
    /// dials before then fail as a not-yet-listening guest's do.
    pub slow_sshd_ms: u64,
    /// `GET /v1/vms/{name}` is accepted and never answered (a controller stuck on its
    /// store), until the controller stops.
    pub vm_reads_hang: bool,
    /// How a port-forward ends when the VM's side ends (see [`VmEnd`]).
    pub vm_end: VmEnd,
}

/// How the controller ends a port-forward whose VM side ended (sshd hung up, the worker's
/// connection broke). Orchard's pinned coder/websocket `NetConn.Close` cancels its read,
/// which closes the TCP connection, before it writes the close frame (status 1000), so a
/// real controller often drops the connection without any close frame.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VmEnd {
    /// Always the close frame (the handshake as coder/websocket means it).
    Frame,
    /// Always a dropped connection, no close frame.
    Drop,
    /// One or the other per port-forward, decided by this seed and the port-forward's
    /// number, so a run is reproducible.
    Seeded(u64),
}

impl Default for VmEnd {
    /// Never more lenient than the real controller: some connections drop.
    fn default() -> Self {
        VmEnd::Seeded(0)
    }
}

impl VmEnd {
    /// Whether the `n`th port-forward drops instead of sending its close frame.
    pub fn drops(self, n: u64) -> bool {
        match self {
            VmEnd::Frame => false,
            VmEnd::Drop => true,
            VmEnd::Seeded(seed) => {
                // splitmix64: a well-spread bit per (seed, n) without a dependency.
                let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) & 1 == 1
            }
        }
    }
}

/// What tests see of a running controller; dropping it stops the controller, ends every
/// connection, and stops and deletes every VM its workers made.
pub struct Sim {
    shared: Arc<Shared>,
    /// `https://127.0.0.1:PORT` (or `http://`), with the API prefix, without `/v1`.
    pub url: String,
    /// The certificate's PEM, when serving TLS.
    pub cert_pem: Option<String>,
    /// SHA-256 of the certificate's DER, lowercase hex without separators.
    pub fingerprint: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub(crate) struct Shared {
    pub cfg: Config,
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    /// Wakes the scheduler (after a create, a delete, a worker change).
    pub poke: Notify,
    /// Bumped on every VM change, so waits on a VM's status need no polling.
    pub changed: watch::Sender<u64>,
    /// Bumped to cut every port-forward WebSocket.
    pub cut: watch::Sender<u64>,
    /// Bumped to restart the listener: every connection ends; down for the given time.
    pub restart: watch::Sender<(u64, Duration)>,
    pub shutdown: watch::Sender<bool>,
    /// The workers' tasks, one per VM they took; shutdown waits for them.
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where synthetic workers forward every port: a TCP echo server.
    pub echo_addr: std::net::SocketAddr,
}

#[derive(Default)]
pub(crate) struct State {
    pub vms: BTreeMap<String, VmRecord>,
    pub workers: BTreeMap<String, WorkerRecord>,
    pub next_uid: u64,
    pub port_forwards_served: u64,
    /// The status of each close frame a port-forward client sent (1005: one without a status).
    pub client_close_codes: Vec<u16>,
    /// One per close frame sent because the VM's side ended: whether the client answered.
    pub vm_side_closes: Vec<bool>,
    /// The arguments of every `tart run` the Tart workers started, in order.
    pub tart_runs: Vec<Vec<String>>,
    /// How many port-forwards were dropped without a close frame when their VM side ended.
    pub vm_side_drops: u64,
}

pub(crate) struct VmRecord {
    pub vm: Vm,
    pub events: Vec<Event>,
    /// Dropped with the record: the worker's task for this VM then stops and deletes it.
    pub alive: Option<watch::Sender<()>>,
    /// When `status` became `running`, for the slow-sshd knob.
    pub running_since: Option<Instant>,
}

pub(crate) struct WorkerRecord {
    pub worker: Worker,
    pub spec: WorkerSpec,
    /// The worker lost its connection to the controller (a knob).
    pub vanished: bool,
    pub last_seen: Instant,
}

impl Shared {
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
    pub fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }
}

impl Sim {
    /// Starts the controller and its workers on a runtime of their own.
    pub fn start(cfg: Config) -> anyhow::Result<Sim> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let started = runtime.block_on(server::start(cfg))?;
        Ok(Sim {
            shared: started.shared,
            url: started.url,
            cert_pem: started.cert_pem,
            fingerprint: started.fingerprint,
            runtime: Some(runtime),
        })
    }

    /// Changes the fault knobs.
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.faults.lock().unwrap());
        self.shared.poke.notify_one();
    }

    /// A controller restart: every connection (port-forward WebSockets included) ends at
    /// once and the port refuses connections for `down`; VMs, workers and accounts stay.
    pub fn restart(&self, down: Duration) {
        self.shared.cut.send_modify(|n| *n += 1);
        self.shared.restart.send_modify(|(n, d)| {
            *n += 1;
            *d = down;
        });
    }

    /// Cuts every open port-forward WebSocket (no close frame), as a proxy or a network
    /// blip does; the controller stays up.
    pub fn cut_port_forwards(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// The worker stops talking to the controller: no heartbeats, port-forwards to its VMs
    /// answer 503, and after the offline timeout its VMs fail.
    pub fn vanish_worker(&self, name: &str) {
        if let Some(w) = self.shared.state.lock().unwrap().workers.get_mut(name) {
            w.vanished = true;
        }
        self.shared.poke.notify_one();
    }

    /// Creates a VM as `POST /v1/vms` would (same defaults and validations); the error is
    /// the status the controller would answer.
    pub fn create_vm(&self, vm: Vm) -> Result<Vm, u16> {
        api::create(&self.shared, vm).map_err(|r| r.status().as_u16())
    }

    /// Waits until the VM has `status` (`running`, `failed`); false after `limit`.
    pub fn wait_status(&self, name: &str, status: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let now = self
                .shared
                .state
                .lock()
                .unwrap()
                .vms
                .get(name)
                .map(|r| r.vm.status.clone());
            if now.as_deref() == Some(status) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Every VM record, as `GET /v1/vms` would list it.
    pub fn vms(&self) -> Vec<Vm> {
        let state = self.shared.state.lock().unwrap();
        state.vms.values().map(|r| r.vm.clone()).collect()
    }

    /// The status of every close frame port-forward clients sent, in order (1005 for a close
    /// frame without a status, which the real controller logs as a failed proxy).
    pub fn client_close_codes(&self) -> Vec<u16> {
        self.shared.state.lock().unwrap().client_close_codes.clone()
    }

    /// One entry per close frame the controller sent because a VM's side ended: whether the
    /// client answered it within 5 s (the real controller logs a failed close otherwise).
    pub fn vm_side_closes(&self) -> Vec<bool> {
        self.shared.state.lock().unwrap().vm_side_closes.clone()
    }

    /// The arguments of every `tart run` the Tart workers started (after `tart`), in order:
    /// what a worker's Mac ran for each VM, Softnet flags included.
    pub fn tart_runs(&self) -> Vec<Vec<String>> {
        self.shared.state.lock().unwrap().tart_runs.clone()
    }

    /// How many port-forward WebSockets were opened (answered 101).
    pub fn vm_side_drops(&self) -> u64 {
        self.shared.state.lock().unwrap().vm_side_drops
    }

    pub fn port_forwards_served(&self) -> u64 {
        self.shared.state.lock().unwrap().port_forwards_served
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            // Deleting the records ends each VM task, which stops and deletes its Tart VM.
            rt.block_on(worker::shut_down(self.shared.clone()));
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
