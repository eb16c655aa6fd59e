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
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
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

/// How long ssh gets, after the connection dropped with no close frame, to end its side on
/// its own: an ssh whose session was complete exits at once; one in mid-session waits for
/// bytes and does not. Short: meanwhile ssh (a ControlMaster) still looks alive.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// How the controller's side of the stream ended.
enum End {
    /// A close frame with status 1000: the VM's side ended.
    Closed,
    /// The connection ended with no close frame; what the socket said, if anything.
    Dropped(Option<String>),
}

/// Carries `input` to the VM and the VM's bytes to `output` until either side ends.
///
/// When the VM's side ends (sshd hung up, the worker's connection to the VM broke), the
/// controller's handler closes the client's side (spec/orchard.md §1.8). It means to send a
/// close frame with status 1000, which is answered, as the protocol asks; but Orchard's
/// coder/websocket closes the TCP connection before it writes that frame, so the connection
/// often just drops, exactly as when the controller restarts or something between cuts it.
/// A drop is therefore a normal end when ssh then ends its side on its own within
/// [`DROP_GRACE`] (its session was complete: sshd hung up after it), and otherwise an error
/// that names both causes. When `input` ends first (ssh closed it), the proxy sends its
/// own close with status 1000, which the controller takes as a normal end, and how the
/// connection ends from then on no longer matters.
pub async fn bridge<R, W>(ws: Forward, mut input: R, mut output: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let down = async {
        while let Some(msg) = stream.next().await {
            let bytes = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => t.as_bytes().to_vec().into(),
                Ok(Message::Close(frame)) => {
                    return closed_by_controller(frame).map(|_| End::Closed)
                }
                Ok(_) => continue,
                Err(e) => return broken(e).map(End::Dropped),
            };
            output.write_all(&bytes).await?;
            output.flush().await?;
        }
        Ok(End::Dropped(None))
    };
    tokio::pin!(down);
    // `None`: the controller closed it; else how our side ended.
    let ours = {
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    let _ = sink.send(normal_close()).await;
                    return anyhow::Ok(());
                }
                sink.send(Message::Binary(buf[..n].to_vec().into())).await?;
            }
        };
        tokio::pin!(up);
        tokio::select! {
            // ssh's end first when both are ready: its session ended before the drop.
            biased;
            r = &mut up => Some(r),
            r = &mut down => match r? {
                End::Closed => None,
                // ssh still holds its side open: give it the moment a finished session
                // needs to end it; if it does not, its session was cut.
                End::Dropped(how) => match tokio::time::timeout(DROP_GRACE, &mut up).await {
                    Ok(Ok(())) => return Ok(()),
                    _ => return Err(cut(how.as_deref())),
                },
            },
        }
    };
    match ours {
        // The controller closed it: the answer to its close is queued; send it.
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
            Ok(())
        }
        Some(r) => {
            r?;
            // Our side is done (ssh closed it): the VM's last bytes and the controller's
            // answer may still come, but how the connection ends no longer matters.
            let _ = tokio::time::timeout(Duration::from_secs(10), down).await;
            Ok(())
        }
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The controller's close: 1000 is the VM's side ending; anything else names a fault.
fn closed_by_controller(frame: Option<CloseFrame>) -> Result<()> {
    match frame {
        None => Ok(()),
        Some(f) if f.code == CloseCode::Normal => Ok(()),
        Some(f) => bail!(
            "the Orchard controller closed the port-forward with status {}: {}",
            u16::from(f.code),
            f.reason
        ),
    }
}

/// The connection ended with no close frame while ssh's session went on; `how` is what the
/// socket said, if anything. The controller's own close drops the connection too, so which
/// side ended it is unknown.
fn cut(how: Option<&str>) -> anyhow::Error {
    let how = how.map(|h| format!(" ({h})")).unwrap_or_default();
    anyhow!("the port-forward through the Orchard controller ended without a WebSocket close while ssh's session went on{how}: the VM side ended (sshd or the worker's connection to the VM), or the controller or the network cut the connection (a controller restart, a proxy)")
}

/// A socket error: `Ok(how)` when it is the connection ending without a close frame.
fn broken(e: tungstenite::Error) -> Result<Option<String>> {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed => Ok(None),
        tungstenite::Error::Io(io) => Ok(Some(io.to_string())),
        e => bail!("the port-forward through the Orchard controller failed: {e}"),
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
