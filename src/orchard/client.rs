//! The controller's REST API: one bounded HTTP/1.1 request per call, over TLS with
//! [`super::trust`], with HTTP Basic auth (service account and token, spec/orchard.md §1.2).
//!
//! The token is read from its file when the client is made and lives only in the
//! `Authorization` header: never in a URL, an argument or a log line (`Debug` hides it).
//! Reads and deletes are retried with back-off on network errors and 5xx, a bounded number of
//! times; a create is not (it may have happened), the caller decides. Statuses become
//! [`ApiError`]s that say what to do: 401 names the role the account lacks, 400/409/412
//! carry Orchard's message.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::settings::OrchardSettings;
use super::trust::{client_config, Tls};
use super::types::{ControllerInfo, ErrorBody, Vm, VmSpec, Worker};
use super::url::ControllerUrl;

/// Sent with every request: without one, port-forward falls back to text messages, and a
/// `Orchard/0…` agent would turn a VM update into a worker's state report (§1.3).
pub const USER_AGENT: &str = concat!("gitlab-runner-tart-driver/", env!("CARGO_PKG_VERSION"));
/// Orchard's own client gives every request 30 s.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const BODY_LIMIT: usize = 16 << 20;
/// Pauses before the retries of a read or delete.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// A byte stream to the controller, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a call to the controller did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// No answer: connection, TLS, timeout. Worth retrying.
    Network(String),
    /// 401 (or 403): no such account or a wrong token (`missing` is None), or the account
    /// lacks a role (`missing` is Orchard's message naming it).
    Unauthorized {
        account: String,
        missing: Option<String>,
    },
    /// 404.
    NotFound,
    /// 400, 408, 409, 412, 417: the controller refused the request, with its message.
    Rejected { status: u16, message: String },
    /// 5xx, after the retries.
    Server { status: u16, message: String },
}

impl ApiError {
    pub fn from_status(status: u16, body: &[u8], account: &str) -> ApiError {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .map(|b| b.message)
            .unwrap_or_default();
        match status {
            401 | 403 => ApiError::Unauthorized {
                account: account.to_string(),
                missing: (!message.is_empty()).then_some(message),
            },
            404 => ApiError::NotFound,
            500..=599 => ApiError::Server { status, message },
            _ => ApiError::Rejected { status, message },
        }
    }

    /// The roles Orchard says are missing ("all|any of the following roles must be
    /// present: a, b").
    pub fn missing_roles(&self) -> Vec<String> {
        match self {
            ApiError::Unauthorized {
                missing: Some(m), ..
            } => m
                .split_once("must be present:")
                .map(|(_, roles)| roles.split(',').map(|r| r.trim().to_string()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, ApiError::Network(_) | ApiError::Server { .. })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Network(what) => write!(f, "cannot reach the Orchard controller: {what}"),
            ApiError::Unauthorized {
                account,
                missing: None,
            } => write!(
                f,
                "the Orchard controller refused service account `{account}`: wrong name or token (check --orchard-service-account and the token in --orchard-token-file)"
            ),
            ApiError::Unauthorized {
                account,
                missing: Some(m),
            } => write!(
                f,
                "service account `{account}` lacks a role ({m}); give it that role on the controller"
            ),
            ApiError::NotFound => write!(f, "not found on the Orchard controller"),
            ApiError::Rejected { status, message } => {
                write!(f, "the Orchard controller refused the request ({status}): {message}")
            }
            ApiError::Server { status, message } if message.is_empty() => {
                write!(f, "the Orchard controller failed ({status})")
            }
            ApiError::Server { status, message } => {
                write!(f, "the Orchard controller failed ({status}): {message}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// `Basic …` for the service account; never printed.
struct Authorization(String);

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorization(<redacted>)")
    }
}

pub struct Client {
    pub url: ControllerUrl,
    pub account: String,
    authorization: Authorization,
    tls: Option<Tls>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("account", &self.account)
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

/// The token: the file's first line, without surrounding whitespace.
pub fn read_token(settings: &OrchardSettings) -> Result<String> {
    let path = &settings.token_file;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the Orchard token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("the Orchard token file {} is empty", path.display());
    }
    Ok(token)
}

impl Client {
    pub fn new(settings: &OrchardSettings) -> Result<Client> {
        let token = read_token(settings)?;
        let raw = format!("{}:{token}", settings.service_account);
        let authorization = Authorization(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ));
        let tls = if settings.url.tls {
            Some(client_config(&settings.trust, &settings.url)?)
        } else {
            None
        };
        Ok(Client {
            url: settings.url.clone(),
            account: settings.service_account.clone(),
            authorization,
            tls,
        })
    }

    /// The SHA-256 of the certificate the controller last presented.
    pub fn seen_fingerprint(&self) -> Option<String> {
        self.tls
            .as_ref()
            .and_then(|t| t.seen.lock().unwrap().clone())
    }

    pub(super) fn authorization(&self) -> &str {
        &self.authorization.0
    }

    /// `<prefix>/v1<path>`.
    pub(super) fn path(&self, path: &str) -> String {
        format!("{}/v1{path}", self.url.prefix)
    }

    /// A connection to the controller, TLS-verified when the URL is https.
    pub(super) async fn connect(&self) -> Result<Box<dyn Io>, ApiError> {
        let authority = self.url.authority();
        let tcp = tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(&authority))
            .await
            .map_err(|_| ApiError::Network(format!("no connection to {authority} within 10s")))?
            .map_err(|e| ApiError::Network(format!("{authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = tokio::time::timeout(
            CONNECT_LIMIT,
            connector.connect(tls.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| ApiError::Network(format!("no TLS handshake with {authority} within 10s")))?
        .map_err(|e| ApiError::Network(format!("TLS with {authority}: {e}")))?;
        Ok(Box::new(stream))
    }

    /// One request, bounded; the status and the body.
    async fn once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        auth: bool,
    ) -> Result<(u16, Bytes), ApiError> {
        let attempt = async {
            let io = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| ApiError::Network(format!("HTTP: {e}")))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(self.path(path))
                .header("Host", self.url.authority())
                .header("User-Agent", USER_AGENT)
                .header("Accept", "application/json");
            if auth {
                req = req.header("Authorization", self.authorization());
            }
            if body.is_some() {
                req = req.header("Content-Type", "application/json");
            }
            let req = req
                .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
                .map_err(|e| ApiError::Network(format!("request: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ApiError::Network(format!("HTTP: {e}")))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map_err(|e| ApiError::Network(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_LIMIT, attempt)
            .await
            .map_err(|_| {
                ApiError::Network(format!("no answer within {}s", REQUEST_LIMIT.as_secs()))
            })?
    }

    /// A request whose answer must be 2xx; reads and deletes are retried (see the module
    /// doc). `Ok` holds the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Bytes, ApiError> {
        self.retried(method, path, body, true).await
    }

    async fn retried(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        auth: bool,
    ) -> Result<Bytes, ApiError> {
        let idempotent = method != Method::POST;
        let mut pauses = BACKOFF.iter();
        loop {
            let error = match self.once(&method, path, body, auth).await {
                Ok((status, bytes)) if (200..300).contains(&status) => return Ok(bytes),
                Ok((status, bytes)) => ApiError::from_status(status, &bytes, &self.account),
                Err(e) => e,
            };
            match pauses.next() {
                Some(pause) if idempotent && error.retryable() => {
                    tracing::debug!("Orchard {method} {path}: {error}; retrying");
                    tokio::time::sleep(*pause).await;
                }
                _ => return Err(error),
            }
        }
    }

    /// The raw status and body of one authenticated request, no retries: for probes.
    pub async fn probe(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Bytes), ApiError> {
        self.once(&method, path, body, true).await
    }

    /// `GET /v1/`: the controller answers, without credentials.
    pub async fn liveness(&self) -> Result<(), ApiError> {
        self.retried(Method::GET, "/", None, false)
            .await
            .map(|_| ())
    }

    pub async fn info(&self) -> Result<ControllerInfo, ApiError> {
        decode(self.call(Method::GET, "/controller/info", None).await?)
    }

    pub async fn list_vms(&self) -> Result<Vec<Vm>, ApiError> {
        decode(self.call(Method::GET, "/vms", None).await?)
    }

    pub async fn list_workers(&self) -> Result<Vec<Worker>, ApiError> {
        decode(self.call(Method::GET, "/workers", None).await?)
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ApiError> {
        decode(
            self.call(Method::GET, &format!("/vms/{name}"), None)
                .await?,
        )
    }

    /// `POST /v1/vms`, once: a lost answer may still have created the VM, so retrying is
    /// the caller's decision (it knows the name, and can look).
    pub async fn create_vm(&self, spec: &VmSpec) -> Result<Vm, ApiError> {
        let body = serde_json::to_vec(spec).expect("a VM spec serializes");
        decode(self.call(Method::POST, "/vms", Some(&body)).await?)
    }

    /// `DELETE /v1/vms/{name}`; a VM that is already gone is not an error.
    pub async fn delete_vm(&self, name: &str) -> Result<(), ApiError> {
        match self
            .call(Method::DELETE, &format!("/vms/{name}"), None)
            .await
        {
            Ok(_) | Err(ApiError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: Bytes) -> Result<T, ApiError> {
    super::types::decode(&body).map_err(|e| ApiError::Rejected {
        status: 200,
        message: format!("unreadable answer from the controller: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_401_is_a_wrong_name_or_token() {
        let e = ApiError::from_status(401, b"", "ci");
        assert_eq!(
            e,
            ApiError::Unauthorized {
                account: "ci".into(),
                missing: None
            }
        );
        assert!(e.to_string().contains("wrong name or token"), "{e}");
    }

    #[test]
    fn a_401_with_a_message_names_the_missing_role() {
        let body = br#"{"message":"all of the following roles must be present: compute:write"}"#;
        let e = ApiError::from_status(401, body, "ci");
        assert_eq!(e.missing_roles(), ["compute:write"]);
        assert!(e.to_string().contains("compute:write"), "{e}");
        let any = br#"{"message":"any of the following roles must be present: compute:write, compute:connect"}"#;
        assert_eq!(
            ApiError::from_status(403, any, "ci").missing_roles(),
            ["compute:write", "compute:connect"]
        );
    }

    #[test]
    fn refusals_carry_orchards_message_and_5xx_are_server_failures() {
        for status in [400, 409, 412, 417] {
            let e = ApiError::from_status(
                status,
                br#"{"message":"VM with this name already exists"}"#,
                "ci",
            );
            assert!(
                e.to_string().contains("VM with this name already exists"),
                "{e}"
            );
            assert!(!e.retryable());
        }
        let e = ApiError::from_status(503, b"", "ci");
        assert_eq!(
            e,
            ApiError::Server {
                status: 503,
                message: String::new()
            }
        );
        assert!(e.retryable());
        assert_eq!(ApiError::from_status(404, b"", "ci"), ApiError::NotFound);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok-3f9a2c\n").unwrap();
        let settings = OrchardSettings::example(
            "http://127.0.0.1:6120",
            token_file,
            super::super::trust::Trust::SystemRoots,
        );
        let client = Client::new(&settings).unwrap();
        assert!(!format!("{client:?}").contains("tok-3f9a2c"));
        let encoded = base64::engine::general_purpose::STANDARD.encode("gitlab:tok-3f9a2c");
        assert!(!format!("{client:?}").contains(&encoded));
        assert_eq!(client.account, "gitlab");
    }
}
