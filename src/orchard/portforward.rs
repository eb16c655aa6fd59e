//! Orchard's port-forward WebSocket (spec/orchard.md §1.8): a byte stream to a VM's TCP
//! port through the controller, and the bridge that joins it to a pair of pipes (ssh's
//! `ProxyCommand` stdin and stdout).
//!
//! The controller answers 101 only once its worker has a TCP connection to the VM's port;
//! before that it holds the request up to `wait` seconds and answers 408 (not running yet),
//! 500 (the port did not answer) or 503 (the worker is not connected): all three, and
//! network errors, are worth another try until the caller's bound. Bytes travel in binary
//! messages; a User-Agent is always sent, or the controller would switch to text.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::client::{ApiError, Client, Io, USER_AGENT};

pub type Forward = WebSocketStream<Box<dyn Io>>;

/// Longest `wait` one request asks the controller for; retries cover the rest.
const MAX_WAIT: Duration = Duration::from_secs(60);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// One attempt: the WebSocket, or the controller's refusal.
pub async fn open(
    client: &Client,
    vm: &str,
    port: u16,
    wait: Duration,
) -> Result<Forward, ApiError> {
    let io = client.connect().await?;
    let scheme = if client.url.tls { "wss" } else { "ws" };
    let uri = format!(
        "{scheme}://{}{}?port={port}&wait={}",
        client.url.authority(),
        client.path(&format!("/vms/{vm}/port-forward")),
        wait.as_secs()
    );
    let mut req = uri
        .into_client_request()
        .map_err(|e| ApiError::Network(format!("port-forward request: {e}")))?;
    let headers = req.headers_mut();
    headers.insert("User-Agent", USER_AGENT.parse().expect("ASCII"));
    headers.insert(
        "Authorization",
        client
            .authorization()
            .parse()
            .map_err(|_| ApiError::Network("the token is not a valid header value".into()))?,
    );
    // The controller may hold the request for `wait` before it answers.
    let limit = wait + Duration::from_secs(30);
    match tokio::time::timeout(limit, tokio_tungstenite::client_async(req, io)).await {
        Err(_) => Err(ApiError::Network(format!(
            "no answer to the port-forward within {}s",
            limit.as_secs()
        ))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().clone().unwrap_or_default();
            Err(ApiError::from_status(
                resp.status().as_u16(),
                &body,
                &client.account,
            ))
        }
        Ok(Err(e)) => Err(ApiError::Network(format!("port-forward: {e}"))),
    }
}

/// 408, 500, 503 and network errors: the VM or its worker may be ready a moment later.
pub fn worth_retrying(e: &ApiError) -> bool {
    match e {
        ApiError::Network(_) => true,
        ApiError::Rejected { status, .. } => *status == 408,
        ApiError::Server { status, .. } => matches!(status, 500 | 502 | 503 | 504),
        _ => false,
    }
}

/// Opens the port-forward, retrying what [`worth_retrying`] until `bound` has passed.
pub async fn open_within(client: &Client, vm: &str, port: u16, bound: Duration) -> Result<Forward> {
    if vm.is_empty()
        || !vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
    {
        bail!("`{vm}` is not an Orchard VM name ([A-Za-z0-9:_.-])");
    }
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_secs(1);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.clamp(Duration::from_secs(1), MAX_WAIT);
        match open(client, vm, port, wait).await {
            Ok(ws) => return Ok(ws),
            Err(e) if worth_retrying(&e) && Instant::now() + pause < deadline => {
                tracing::debug!("port-forward to {vm}:{port}, attempt {attempts}: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(e) => {
                let gave_up = if worth_retrying(&e) {
                    format!(
                        " (gave up after {attempts} attempts in {}s)",
                        bound.as_secs()
                    )
                } else {
                    String::new()
                };
                return Err(anyhow!(e).context(format!(
                    "port-forward to {vm} port {port} through {}{gave_up}",
                    client.url
                )));
            }
        }
    }
}

/// Carries `input` to the VM and the VM's bytes to `output` until the VM side closes.
/// A WebSocket that ends without a close frame (a cut, a controller restart) is an error.
pub async fn bridge<R, W>(ws: Forward, mut input: R, mut output: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                let _ = sink.send(Message::Close(None)).await;
                return anyhow::Ok(());
            }
            sink.send(Message::Binary(buf[..n].to_vec().into())).await?;
        }
    };
    let down = async {
        while let Some(msg) = stream.next().await {
            let bytes = match msg.map_err(|e| anyhow!("the port-forward broke: {e}"))? {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes().to_vec().into(),
                Message::Close(_) => return Ok(()),
                _ => continue,
            };
            output.write_all(&bytes).await?;
            output.flush().await?;
        }
        bail!("the controller cut the port-forward (no close frame)")
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => {
            r?;
            // Our side is done (ssh closed it): the VM's last bytes and the close may still
            // come, but how the controller ends the connection no longer matters.
            let _ = tokio::time::timeout(Duration::from_secs(10), down).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_running_yet_dial_failures_and_absent_workers_are_retried() {
        for status in [408u16, 500, 503] {
            let e = ApiError::from_status(status, b"", "ci");
            assert!(worth_retrying(&e), "{status}");
        }
        assert!(worth_retrying(&ApiError::Network("reset".into())));
    }

    #[test]
    fn a_failed_vm_an_unknown_vm_and_a_bad_token_are_not_retried() {
        for status in [401u16, 404, 417, 400] {
            assert!(
                !worth_retrying(&ApiError::from_status(status, b"", "ci")),
                "{status}"
            );
        }
    }
}
