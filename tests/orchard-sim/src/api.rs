//! The REST endpoints (spec/orchard.md §1.4–§1.7) and the test-bed control endpoints under
//! `/_sim/`, which a real controller does not have.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{authorize, Need, ADMIN_READ, COMPUTE_READ, COMPUTE_WRITE};
use crate::model::{self, ErrorBody, Event, HostDir, Vm, TART_VMS, ZERO_TIME};
use crate::{portforward, Faults, Shared, VmRecord};

type S = State<Arc<Shared>>;

/// `{"message": text}` with `status`.
pub fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            message: text.into(),
        }),
    )
        .into_response()
}

pub fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/controller/info", get(info))
        .route("/cluster-settings", get(cluster_settings))
        .route("/vms", get(list_vms).post(create_vm))
        .route("/vms/{name}", get(get_vm).put(update_vm).delete(delete_vm))
        .route("/vms/{name}/events", get(list_events).post(post_events))
        .route("/vms/{name}/port-forward", get(portforward::handle))
        .route("/vms/{name}/ip", get(portforward::ip))
        .route("/workers", get(list_workers))
        .route("/workers/{name}", get(get_worker).delete(delete_worker));
    let control = Router::new()
        .route("/faults", post(set_faults))
        .route("/restart", post(restart))
        .route("/cut", post(cut))
        .route("/workers/{name}/vanish", post(vanish));
    let prefix = shared.cfg.api_prefix.trim_end_matches('/').to_string();
    let liveness = get(|| async { "Orchard API (orchard-sim)" });
    Router::new()
        .route(&format!("{prefix}/v1/"), liveness)
        .nest(&format!("{prefix}/v1"), v1)
        .nest("/_sim", control)
        .with_state(shared)
}

fn auth(s: &Shared, headers: &HeaderMap, need: Need) -> Result<(), Response> {
    authorize(&s.cfg.accounts, headers, need)
}

async fn info(State(s): S, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&s, &headers, Need::Account) {
        return r;
    }
    Json(serde_json::json!({
        "version": "0.55.0-sim",
        "commit": "orchard-sim",
        "capabilities": ["rpc-v1", "vm-state-endpoint", "rpc-v2"],
    }))
    .into_response()
}

async fn cluster_settings(State(s): S, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[ADMIN_READ])) {
        return r;
    }
    Json(serde_json::json!({
        "hostDirPolicies": s.cfg.host_dir_policies,
        "schedulerProfile": "optimize-utilization",
    }))
    .into_response()
}

async fn list_vms(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_READ])) {
        return r;
    }
    let worker = match q.get("filter") {
        None => None,
        Some(f) => match f.strip_prefix("worker=") {
            Some(w) => Some(w.to_string()),
            None => {
                return message(
                    StatusCode::PRECONDITION_FAILED,
                    format!("unsupported filter {f:?}: only worker=<name> is supported"),
                )
            }
        },
    };
    let state = s.state.lock().unwrap();
    let mut vms: Vec<&Vm> = state
        .vms
        .values()
        .map(|r| &r.vm)
        .filter(|vm| worker.as_ref().is_none_or(|w| &vm.worker == w))
        .collect();
    vms.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Json(vms).into_response()
}

/// Checks a create request as the controller does; the error response if it is refused.
fn validate(s: &Shared, vm: &Vm) -> Result<(), Response> {
    let refuse = |text: String| Err(message(StatusCode::PRECONDITION_FAILED, text));
    if vm.name.is_empty() {
        return refuse("VM name cannot be empty".into());
    }
    if !vm
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
    {
        return refuse(format!(
            "VM name {:?} contains characters other than [A-Za-z0-9:_.-]",
            vm.name
        ));
    }
    if vm.image.is_empty() {
        return refuse("VM image cannot be empty".into());
    }
    if !["", "IfNotPresent", "Always"].contains(&vm.image_pull_policy.as_str()) {
        return refuse(format!(
            "unsupported image pull policy {:?}",
            vm.image_pull_policy
        ));
    }
    if !["", "Never", "OnFailure"].contains(&vm.restart_policy.as_str()) {
        return refuse(format!(
            "unsupported restart policy {:?}",
            vm.restart_policy
        ));
    }
    if !["", "darwin", "linux"].contains(&vm.os.as_str())
        || !["", "arm64", "amd64"].contains(&vm.arch.as_str())
        || !["", "tart", "vetu"].contains(&vm.runtime.as_str())
    {
        return refuse(format!(
            "unsupported os/arch/runtime {:?}/{:?}/{:?}",
            vm.os, vm.arch, vm.runtime
        ));
    }
    for dir in &vm.host_dirs {
        check_host_dir(s, dir)?;
    }
    Ok(())
}

fn check_host_dir(s: &Shared, dir: &HostDir) -> Result<(), Response> {
    let bad = |text: String| Err(message(StatusCode::BAD_REQUEST, text));
    if dir.name.is_empty() || dir.path.is_empty() {
        return bad("host directory name and path cannot be empty".into());
    }
    // As Orchard's host_dir_policy.go: any `..` in the path, even inside a name (`a..b`).
    let allowed = !dir.path.contains("..")
        && s.cfg
            .host_dir_policies
            .iter()
            .any(|p| dir.path.starts_with(&p.path_prefix) && (dir.ro || !p.ro));
    if allowed {
        Ok(())
    } else {
        bad(format!(
            "host directory {:?} ({}) is disallowed by policy",
            dir.name, dir.path
        ))
    }
}

async fn create_vm(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_WRITE])) {
        return r;
    }
    let Ok(vm) = serde_json::from_slice::<Vm>(&body) else {
        return message(StatusCode::BAD_REQUEST, "invalid JSON was provided");
    };
    match create(&s, vm) {
        Ok(vm) => Json(vm).into_response(),
        Err(r) => r,
    }
}

/// Validates and stores a new VM, as `POST /v1/vms` does after authentication.
pub fn create(s: &Shared, mut vm: Vm) -> Result<Vm, Response> {
    validate(s, &vm)?;
    let mut state = s.state.lock().unwrap();
    if state.vms.contains_key(&vm.name) {
        return Err(message(
            StatusCode::CONFLICT,
            "VM with this name already exists",
        ));
    }
    state.next_uid += 1;
    fill_defaults(&mut vm, state.next_uid);
    state.vms.insert(
        vm.name.clone(),
        VmRecord {
            vm: vm.clone(),
            events: Vec::new(),
            alive: None,
            running_since: None,
        },
    );
    drop(state);
    s.bump();
    s.poke.notify_one();
    Ok(vm)
}

/// What the controller fills in on create; the status fields start empty.
fn fill_defaults(vm: &mut Vm, uid: u64) {
    let default = |field: &mut String, value: &str| {
        if field.is_empty() {
            *field = value.into();
        }
    };
    default(&mut vm.image_pull_policy, "IfNotPresent");
    default(&mut vm.os, "darwin");
    default(&mut vm.arch, "arm64");
    default(&mut vm.runtime, "tart");
    default(&mut vm.restart_policy, "Never");
    default(&mut vm.username, "admin");
    default(&mut vm.password, "admin");
    vm.uid = format!("00000000-0000-4000-8000-{uid:012x}");
    vm.created_at = model::rfc3339_now();
    vm.power_state = "running".into();
    vm.net_softnet = vm.net_softnet || vm.net_softnet_deprecated;
    vm.net_softnet_deprecated = vm.net_softnet;
    if vm.os == "darwin" && vm.runtime == "tart" {
        vm.resources.entry(TART_VMS.into()).or_insert(1);
    }
    vm.status = "pending".into();
    vm.status_message = String::new();
    vm.worker = String::new();
    vm.generation = 0;
    vm.observed_generation = 0;
    vm.restart_count = 0;
    vm.conditions = Vec::new();
    for t in [
        &mut vm.restarted_at,
        &mut vm.scheduled_at,
        &mut vm.started_at,
    ] {
        *t = ZERO_TIME.into();
    }
}

async fn get_vm(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_READ])) {
        return r;
    }
    if s.faults().vm_reads_hang {
        // Accepted, never answered, until the controller stops.
        let mut shutdown = s.shutdown.subscribe();
        let _ = shutdown.changed().await;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match s.state.lock().unwrap().vms.get(&name) {
        Some(r) => Json(&r.vm).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A spec update bumps `generation`; a request whose User-Agent starts `Orchard/0` is an old
/// worker's state report instead (§1.3), which copies the status fields.
async fn update_vm(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_WRITE])) {
        return r;
    }
    let Ok(new) = serde_json::from_slice::<Vm>(&body) else {
        return message(StatusCode::BAD_REQUEST, "invalid JSON was provided");
    };
    let old_worker = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Orchard/0"));
    let mut state = s.state.lock().unwrap();
    let Some(rec) = state.vms.get_mut(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if old_worker {
        rec.vm.status = new.status;
        rec.vm.status_message = new.status_message;
        rec.vm.image_fqn = new.image_fqn;
        rec.vm.observed_generation = new.observed_generation;
        rec.vm.conditions = new.conditions;
    } else {
        if rec.vm.status == "failed" {
            return message(
                StatusCode::PRECONDITION_FAILED,
                "cannot update a VM in a terminal state 'failed'",
            );
        }
        if (new.os, new.arch, new.runtime)
            != (
                rec.vm.os.clone(),
                rec.vm.arch.clone(),
                rec.vm.runtime.clone(),
            )
        {
            return message(
                StatusCode::PRECONDITION_FAILED,
                "os, arch and runtime cannot be changed",
            );
        }
        rec.vm.cpu = new.cpu;
        rec.vm.memory = new.memory;
        rec.vm.disk_size = new.disk_size;
        rec.vm.labels = new.labels;
        rec.vm.generation += 1;
    }
    let vm = rec.vm.clone();
    drop(state);
    s.bump();
    Json(vm).into_response()
}

async fn delete_vm(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_WRITE])) {
        return r;
    }
    if let Some(code) = s.faults().delete_fails_with {
        return StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    // Dropping the record (and its events) ends the worker's task for the VM.
    let removed = s.state.lock().unwrap().vms.remove(&name);
    match removed {
        Some(_) => {
            s.bump();
            s.poke.notify_one();
            StatusCode::OK.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_events(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_READ])) {
        return r;
    }
    let number = |key: &str| -> Result<Option<usize>, Response> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
                message(
                    StatusCode::BAD_REQUEST,
                    format!("invalid {key} parameter {v:?}"),
                )
            }),
        }
    };
    let (limit, cursor) = match (number("limit"), number("cursor")) {
        (Ok(l), Ok(c)) => (l, c.unwrap_or(0)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let desc = match q.get("order").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return message(StatusCode::BAD_REQUEST, format!("invalid order {o:?}")),
    };
    let state = s.state.lock().unwrap();
    let Some(rec) = state.vms.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut events: Vec<Event> = rec.events.clone();
    if desc {
        events.reverse();
    }
    let page: Vec<Event> = events
        .iter()
        .skip(cursor)
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let next = cursor + page.len();
    let mut response = Json(page).into_response();
    if next < events.len() {
        response
            .headers_mut()
            .insert("X-Next-Cursor", next.to_string().parse().unwrap());
    }
    response
}

async fn post_events(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_WRITE])) {
        return r;
    }
    let Ok(events) = serde_json::from_slice::<Vec<Event>>(&body) else {
        return message(StatusCode::BAD_REQUEST, "invalid JSON was provided");
    };
    let mut state = s.state.lock().unwrap();
    match state.vms.get_mut(&name) {
        Some(rec) => {
            rec.events.extend(events);
            StatusCode::OK.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_workers(State(s): S, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_READ])) {
        return r;
    }
    let state = s.state.lock().unwrap();
    let workers: Vec<_> = state.workers.values().map(|w| &w.worker).collect();
    Json(workers).into_response()
}

async fn get_worker(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_READ])) {
        return r;
    }
    match s.state.lock().unwrap().workers.get(&name) {
        Some(w) => Json(&w.worker).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Deleting a worker fails its VMs (§2.5).
async fn delete_worker(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = auth(&s, &headers, Need::All(&[COMPUTE_WRITE])) {
        return r;
    }
    let mut state = s.state.lock().unwrap();
    if state.workers.remove(&name).is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    for rec in state.vms.values_mut() {
        if rec.vm.worker == name && rec.vm.status != "failed" {
            rec.vm.status = "failed".into();
            rec.vm.status_message = "Worker was deleted".into();
        }
    }
    drop(state);
    s.bump();
    StatusCode::OK.into_response()
}

async fn set_faults(State(s): S, Json(faults): Json<Faults>) -> Response {
    *s.faults.lock().unwrap() = faults;
    s.poke.notify_one();
    StatusCode::OK.into_response()
}

async fn restart(State(s): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let down = q
        .get("down_ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    s.cut.send_modify(|n| *n += 1);
    s.restart.send_modify(|(n, d)| {
        *n += 1;
        *d = down;
    });
    StatusCode::OK.into_response()
}

async fn cut(State(s): S) -> Response {
    s.cut.send_modify(|n| *n += 1);
    StatusCode::OK.into_response()
}

async fn vanish(State(s): S, Path(name): Path<String>) -> Response {
    match s.state.lock().unwrap().workers.get_mut(&name) {
        Some(w) => w.vanished = true,
        None => return StatusCode::NOT_FOUND.into_response(),
    }
    s.poke.notify_one();
    StatusCode::OK.into_response()
}
