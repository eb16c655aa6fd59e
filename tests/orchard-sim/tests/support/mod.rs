//! A plain HTTP/1.1 client and a WebSocket client for talking to orchard-sim in tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use orchard_sim::{Account, Config, Sim, WorkerSpec, ALL_ROLES};
use serde_json::Value;

pub const ADMIN: (&str, &str) = ("driver", "s3cret-token");

/// A controller over plain HTTP with one all-roles account and one synthetic worker.
pub fn sim_with(change: impl FnOnce(&mut Config)) -> Sim {
    let mut cfg = Config {
        tls: false,
        accounts: vec![Account::new(ADMIN.0, ADMIN.1, ALL_ROLES)],
        workers: vec![WorkerSpec::default()],
        scheduler_interval_ms: 100,
        ..Config::default()
    };
    change(&mut cfg);
    Sim::start(cfg).expect("start orchard-sim")
}

pub fn sim() -> Sim {
    sim_with(|_| {})
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn basic(user: &str, token: &str) -> String {
    let raw = format!("{user}:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn host_port(sim: &Sim) -> String {
    sim.url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// One request; `auth` is (user, token) or None.
pub fn request(
    sim: &Sim,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> Reply {
    request_with(
        sim,
        method,
        path,
        auth,
        body,
        &[("User-Agent", "orchard-sim-tests/1")],
    )
}

pub fn request_with(
    sim: &Sim,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let hp = host_port(sim);
    let mut tcp = TcpStream::connect(&hp).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\n");
    if let Some((u, t)) = auth {
        req.push_str(&format!("Authorization: {}\r\n", basic(u, t)));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

pub fn admin(sim: &Sim, method: &str, path: &str, body: Option<&str>) -> Reply {
    request(sim, method, path, Some(ADMIN), body)
}

pub fn create(sim: &Sim, body: Value) -> Reply {
    admin(sim, "POST", "/v1/vms", Some(&body.to_string()))
}

pub fn vm(sim: &Sim, name: &str) -> Value {
    let r = admin(sim, "GET", &format!("/v1/vms/{name}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits until the VM's status is `status`; panics after `limit`.
pub fn wait_status(sim: &Sim, name: &str, status: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = vm(sim, name);
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {status}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens the port-forward WebSocket; Err is the HTTP status and body of a refusal.
pub fn port_forward(
    sim: &Sim,
    vm: &str,
    query: &str,
    auth: (&str, &str),
    user_agent: Option<&str>,
) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let hp = host_port(sim);
    let url = format!("ws://{hp}/v1/vms/{vm}/port-forward?{query}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", basic(auth.0, auth.1).parse().unwrap());
    if let Some(ua) = user_agent {
        req.headers_mut().insert("User-Agent", ua.parse().unwrap());
    }
    let tcp = TcpStream::connect(&hp).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    match tungstenite::client::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("port-forward handshake: {e}"),
    }
}

/// Reads data messages until `want` bytes arrived; returns (bytes, all were binary).
pub fn read_bytes(ws: &mut Ws, want: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut binary = true;
    while out.len() < want {
        match ws.read().expect("read") {
            tungstenite::Message::Binary(b) => out.extend_from_slice(&b),
            tungstenite::Message::Text(t) => {
                binary = false;
                out.extend_from_slice(t.as_bytes());
            }
            _ => {}
        }
    }
    (out, binary)
}
