//! `GET /v1/vms/{name}/port-forward?port=&wait=` and `GET /v1/vms/{name}/ip?wait=`
//! (spec/orchard.md §1.8, §1.11).
//!
//! Before the upgrade the controller waits up to `wait` seconds (default 10) for the VM to
//! run (408 on timeout, 417 if it failed, 404 if unknown), then has the worker dial the VM's
//! port every second until `wait` runs out (503 if the worker is not connected, 500 if no
//! dial succeeded). One deadline covers both steps. So a 101 means the TCP connection to
//! the VM already exists. After it, binary messages carry raw bytes both ways; a client
//! without a User-Agent gets text messages (an old client's mode).
//!
//! How it ends, as the controller's handler does it (it proxies the WebSocket, wrapped by
//! coder/websocket's `NetConn`, to the worker's connection, and closes the other side when
//! one side's copy ends): when the VM's side ends (EOF, or the worker's connection breaks),
//! a close frame with status 1000 (normal closure) and no reason; a client's close frame is
//! answered with its own status; a message of the wrong type is answered with status 1003
//! and coder/websocket's reason. But coder/websocket's `NetConn.Close` cancels its read,
//! which closes the TCP connection, before it writes that close frame, so when the VM's
//! side ends the client often sees the connection drop with no frame at all: the `vm_end`
//! knob picks which (by default, per port-forward by a fixed seed). A controller that goes
//! away (a restart, the cut knobs) always ends it without a close frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::message;
use crate::auth::{authorize, Need, COMPUTE_CONNECT, COMPUTE_WRITE};
use crate::model::Vm;
use crate::worker::{local_name, tart_cmd};
use crate::Shared;

const CONNECT_ROLES: &[&str] = &[COMPUTE_WRITE, COMPUTE_CONNECT];

type Params = Query<HashMap<String, String>>;

pub async fn handle(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Params,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(r) = authorize(&s.cfg.accounts, &headers, Need::Any(CONNECT_ROLES)) {
        return r;
    }
    if let Some(code) = injected_error(&s) {
        return code;
    }
    let port = match q.get("port").map(|p| p.parse::<u16>()) {
        Some(Ok(p)) if p > 0 => p,
        _ => return message(StatusCode::BAD_REQUEST, "invalid port parameter"),
    };
    let deadline = match wait_param(&q, 10) {
        Ok(wait) => Instant::now() + wait,
        Err(r) => return r,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let vm = match wait_running(&s, &name, deadline).await {
        Ok(vm) => vm,
        Err(r) => return r,
    };
    let tcp = match dial(&s, &vm, port, deadline).await {
        Ok(tcp) => tcp,
        Err(r) => return r,
    };
    let text_mode = headers
        .get("user-agent")
        .is_none_or(|ua| ua.as_bytes().is_empty());
    let vm_end = s.faults().vm_end;
    let drop_at_end = {
        let mut state = s.state.lock().unwrap();
        state.port_forwards_served += 1;
        vm_end.drops(state.port_forwards_served)
    };
    // Subscribed before the 101 goes out: a cut right after the handshake must reach it.
    let cut = s.cut.subscribe();
    ws.on_upgrade(move |socket| bridge(s, socket, tcp, text_mode, cut, drop_at_end))
}

pub async fn ip(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    if let Err(r) = authorize(&s.cfg.accounts, &headers, Need::Any(CONNECT_ROLES)) {
        return r;
    }
    let deadline = match wait_param(&q, 0) {
        Ok(wait) => Instant::now() + wait,
        Err(r) => return r,
    };
    let vm = match wait_running(&s, &name, deadline).await {
        Ok(vm) => vm,
        Err(r) => return r,
    };
    match resolve_ip(&s, &vm, deadline).await {
        Ok(Some(addr)) => Json(serde_json::json!({ "ip": addr })).into_response(),
        Ok(None) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Err(r) => r,
    }
}

/// The next code the `port_forward_errors` knob asks for, shaped as the controller's.
fn injected_error(s: &Shared) -> Option<Response> {
    let code = {
        let mut faults = s.faults.lock().unwrap();
        if faults.port_forward_errors.is_empty() {
            return None;
        }
        faults.port_forward_errors.remove(0)
    };
    Some(match code {
        408 => message(
            StatusCode::REQUEST_TIMEOUT,
            "VM is not running on 'worker' worker",
        ),
        code => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    })
}

fn wait_param(q: &HashMap<String, String>, default: u64) -> Result<Duration, Response> {
    match q.get("wait") {
        None => Ok(Duration::from_secs(default)),
        Some(w) => w
            .parse::<u16>()
            .map(|w| Duration::from_secs(w.into()))
            .map_err(|_| message(StatusCode::BAD_REQUEST, "invalid wait parameter")),
    }
}

async fn wait_running(s: &Shared, name: &str, deadline: Instant) -> Result<Vm, Response> {
    let mut changed = s.changed.subscribe();
    loop {
        let vm = s.state.lock().unwrap().vms.get(name).map(|r| r.vm.clone());
        let Some(vm) = vm else {
            return Err(StatusCode::NOT_FOUND.into_response());
        };
        match vm.status.as_str() {
            "running" => return Ok(vm),
            "failed" => {
                return Err(message(
                    StatusCode::EXPECTATION_FAILED,
                    "VM is in a terminal state 'failed'",
                ))
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, changed.changed()).await.is_err() {
            return Err(message(
                StatusCode::REQUEST_TIMEOUT,
                format!("VM is not running on '{}' worker", vm.worker),
            ));
        }
    }
}

/// The worker's dial to the VM's port, retried every second until the deadline.
async fn dial(s: &Shared, vm: &Vm, port: u16, deadline: Instant) -> Result<TcpStream, Response> {
    loop {
        let Some(ip) = resolve_ip(s, vm, deadline).await? else {
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let addr = if ip == "echo" {
            s.echo_addr
        } else {
            match format!("{ip}:{port}").parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            }
        };
        if sshd_listening(s, vm) {
            let attempt = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr));
            if let Ok(Ok(tcp)) = attempt.await {
                return Ok(tcp);
            }
        }
        if Instant::now() + Duration::from_secs(1) > deadline {
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The slow-sshd knob: nothing listens until that long after the VM became `running`.
fn sshd_listening(s: &Shared, vm: &Vm) -> bool {
    let slow = Duration::from_millis(s.faults().slow_sshd_ms);
    let state = s.state.lock().unwrap();
    state
        .vms
        .get(&vm.name)
        .and_then(|r| r.running_since)
        .is_some_and(|since| since.elapsed() >= slow)
}

/// The VM's address as its worker resolves it (`echo` for a synthetic worker); 503 when the
/// worker is not connected; `None` when no address came before the deadline.
async fn resolve_ip(s: &Shared, vm: &Vm, deadline: Instant) -> Result<Option<String>, Response> {
    let worker = {
        let state = s.state.lock().unwrap();
        state
            .workers
            .get(&vm.worker)
            .filter(|w| !w.vanished)
            .map(|w| w.spec.clone())
    };
    let Some(spec) = worker else {
        return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
    };
    let Some(tart) = spec.tart else {
        return Ok(Some("echo".into()));
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .as_secs()
        .clamp(1, 60);
    let local = local_name(vm);
    let out = tart_cmd(
        &tart,
        &["ip", &local, "--wait", &wait.to_string()],
        wait + 5,
    )
    .await;
    Ok(out.ok().filter(|ip| !ip.is_empty()))
}

/// Carries bytes between the WebSocket and the VM's port until either side closes, or the
/// cut/restart knob drops the WebSocket without a close frame. `drop_at_end`: when the VM's
/// side ends, the connection is dropped without a close frame (the `vm_end` knob).
async fn bridge(
    s: Arc<Shared>,
    mut socket: WebSocket,
    tcp: TcpStream,
    text_mode: bool,
    mut cut: watch::Receiver<u64>,
    drop_at_end: bool,
) {
    let mut shutdown = s.shutdown.subscribe();
    let (mut from_vm, mut to_vm) = tcp.into_split();
    let mut buf = vec![0u8; 32 * 1024];
    let mut carried: u64 = 0;
    let every = Duration::from_millis(s.cfg.ping_interval_ms.max(100));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = cut.changed() => return,
            _ = shutdown.changed() => return,
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) if !text_mode => b.to_vec(),
                    Some(Ok(Message::Text(t))) if text_mode => t.as_bytes().to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // A client's close is answered with its own status (no status: 1005).
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map_or(close_code::STATUS, |f| f.code);
                        s.state.lock().unwrap().client_close_codes.push(code);
                        let _ = to_vm.shutdown().await;
                        // The WebSocket library has queued that answer; reading on sends it.
                        let drain = async { while socket.recv().await.is_some() {} };
                        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                        return;
                    }
                    Some(Ok(_)) => {
                        let (expected, got) = if text_mode {
                            ("MessageText", "MessageBinary")
                        } else {
                            ("MessageBinary", "MessageText")
                        };
                        let _ = to_vm.shutdown().await;
                        let reason = format!("unexpected frame type read (expected {expected}): {got}");
                        let _ = socket.send(close(close_code::UNSUPPORTED, &reason)).await;
                        return;
                    }
                    // The client's connection broke.
                    _ => {
                        let _ = to_vm.shutdown().await;
                        return;
                    }
                };
                if to_vm.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            n = from_vm.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) if drop_at_end => {
                        s.state.lock().unwrap().vm_side_drops += 1;
                        return;
                    }
                    Ok(0) | Err(_) => {
                        // coder/websocket's close handshake: send, then wait up to 5 s for
                        // the client's answer (the controller logs a failure without one).
                        let _ = socket.send(close(close_code::NORMAL, "")).await;
                        let answer = async {
                            loop {
                                match socket.recv().await {
                                    Some(Ok(Message::Close(_))) => return true,
                                    Some(Ok(_)) => continue,
                                    _ => return false,
                                }
                            }
                        };
                        let answered = tokio::time::timeout(Duration::from_secs(5), answer)
                            .await
                            .unwrap_or(false);
                        s.state.lock().unwrap().vm_side_closes.push(answered);
                        return;
                    }
                    Ok(n) => n,
                };
                let limit = s.faults().cut_after_bytes;
                let allowed = limit.map_or(n as u64, |l| l.saturating_sub(carried).min(n as u64));
                let chunk = &buf[..allowed as usize];
                let msg = if text_mode {
                    Message::Text(String::from_utf8_lossy(chunk).into_owned().into())
                } else {
                    Message::Binary(chunk.to_vec().into())
                };
                if !chunk.is_empty() && socket.send(msg).await.is_err() {
                    return;
                }
                carried += allowed;
                if (allowed as usize) < n {
                    return; // the cut: dropped without a close frame
                }
            }
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
