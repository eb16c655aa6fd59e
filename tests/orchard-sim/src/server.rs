//! The listener: HTTP/1.1 over TLS with the controller's self-signed certificate (ECDSA
//! P-384, CN "Orchard Controller", SAN DNS `orchard-controller`, 10 years), or plain HTTP;
//! and the restart knob, which closes the port, ends every connection and opens it again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Notify};
use tokio_rustls::rustls;

use crate::model::{rfc3339_now, Worker, TART_VMS};
use crate::{api, worker, Config, Shared, State, WorkerRecord};

pub struct Started {
    pub shared: Arc<Shared>,
    pub url: String,
    pub cert_pem: Option<String>,
    pub fingerprint: Option<String>,
}

pub async fn start(cfg: Config) -> anyhow::Result<Started> {
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .with_context(|| format!("listen address {:?}", cfg.listen))?;
    let listener = bind(addr)?;
    let addr = listener.local_addr()?;
    let (tls, cert_pem, fingerprint) = if cfg.tls {
        let (acceptor, pem, fp) = self_signed()?;
        (Some(acceptor), Some(pem), Some(fp))
    } else {
        (None, None, None)
    };
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));

    let mut state = State::default();
    for spec in &cfg.workers {
        let mut resources = spec.resources.clone();
        resources.entry(TART_VMS.into()).or_insert(2);
        resources
            .entry("org.cirruslabs.logical-cores".into())
            .or_insert(8);
        resources
            .entry("org.cirruslabs.memory-mib".into())
            .or_insert(24_576);
        let worker = Worker {
            name: spec.name.clone(),
            machine_id: format!("sim-{}", spec.name),
            created_at: rfc3339_now(),
            arch: "arm64".into(),
            runtime: "tart".into(),
            resources,
            labels: spec.labels.clone(),
            default_cpu: 4,
            default_memory: 8192,
            last_seen: rfc3339_now(),
            scheduling_paused: false,
        };
        state.workers.insert(
            spec.name.clone(),
            WorkerRecord {
                worker,
                spec: spec.clone(),
                vanished: false,
                last_seen: Instant::now(),
            },
        );
    }
    let scheme = if cfg.tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}{}", cfg.api_prefix.trim_end_matches('/'));
    let shared = Arc::new(Shared {
        faults: Mutex::new(cfg.faults.clone()),
        cfg,
        state: Mutex::new(state),
        poke: Notify::new(),
        changed: watch::channel(0).0,
        cut: watch::channel(0).0,
        restart: watch::channel((0, Duration::ZERO)).0,
        shutdown: watch::channel(false).0,
        tasks: Mutex::new(Vec::new()),
        echo_addr,
    });
    tokio::spawn(worker::scheduler(shared.clone()));
    tokio::spawn(serve(shared.clone(), listener, addr, tls));
    Ok(Started {
        shared,
        url,
        cert_pem,
        fingerprint,
    })
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket.listen(128)?)
}

async fn serve(
    s: Arc<Shared>,
    mut listener: TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let app = api::router(s.clone());
    let mut restart = s.restart.subscribe();
    let mut shutdown = s.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = restart.changed() => {
                let down = restart.borrow_and_update().1;
                drop(listener);
                tokio::time::sleep(down).await;
                listener = match bind(addr) {
                    Ok(l) => l,
                    Err(_) => return,
                };
            }
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let app = app.clone();
                let conn_restart = s.restart.subscribe();
                let conn_shutdown = s.shutdown.subscribe();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                connection(stream, app, conn_restart, conn_shutdown).await;
                            }
                        }
                        None => connection(tcp, app, conn_restart, conn_shutdown).await,
                    }
                });
            }
        }
    }
}

/// Serves one connection until it ends or the controller restarts or stops.
async fn connection<I>(
    io: I,
    app: axum::Router,
    mut restart: watch::Receiver<(u64, Duration)>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = restart.changed() => {}
        _ = shutdown.changed() => {}
    }
}

/// A new certificate as the controller makes on its first start; returns the acceptor,
/// the PEM, and the SHA-256 fingerprint of the DER in lowercase hex.
fn self_signed() -> anyhow::Result<(tokio_rustls::TlsAcceptor, String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let mut params = rcgen::CertificateParams::new(vec!["orchard-controller".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Orchard Controller");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let cert = params.self_signed(&key)?;
    let der = cert.der().clone();
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![der], key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert.pem(),
        fingerprint,
    ))
}

async fn echo_server(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            // Echoes until the client ends, or hangs up itself after echoing a `hangup`
            // line: a VM side that ends first, as sshd does after a session.
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if buf[..n].windows(7).any(|w| w == b"hangup\n") {
                    return;
                }
            }
        });
    }
}
