//! HTTP Basic auth with service accounts and roles (spec/orchard.md §1.2).
//!
//! No or wrong credentials: 401 with an empty body. A valid account without the role: 401
//! (not 403) with `{"message":"all of the following roles must be present: …"}`, or "any of
//! the following roles" where one of several roles is enough.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::api::message;

pub const COMPUTE_READ: &str = "compute:read";
pub const COMPUTE_WRITE: &str = "compute:write";
pub const COMPUTE_CONNECT: &str = "compute:connect";
pub const ADMIN_READ: &str = "admin:read";
pub const ADMIN_WRITE: &str = "admin:write";

pub const ALL_ROLES: &[&str] = &[
    COMPUTE_READ,
    COMPUTE_WRITE,
    COMPUTE_CONNECT,
    ADMIN_READ,
    ADMIN_WRITE,
];

/// A service account: the Basic-auth user name, its token (the password) and its roles.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Account {
    pub name: String,
    pub token: String,
    pub roles: Vec<String>,
}

impl Account {
    pub fn new(name: &str, token: &str, roles: &[&str]) -> Account {
        Account {
            name: name.into(),
            token: token.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// What an endpoint asks of the caller.
pub enum Need {
    /// Any valid account.
    Account,
    All(&'static [&'static str]),
    Any(&'static [&'static str]),
}

/// The caller's account if it may use the endpoint, else the controller's 401.
pub fn authorize(accounts: &[Account], headers: &HeaderMap, need: Need) -> Result<(), Response> {
    let empty_401 = || StatusCode::UNAUTHORIZED.into_response();
    let Some((user, token)) = basic_credentials(headers) else {
        return Err(empty_401());
    };
    let Some(account) = accounts
        .iter()
        .find(|a| a.name == user && constant_time_eq(a.token.as_bytes(), token.as_bytes()))
    else {
        return Err(empty_401());
    };
    let has = |role: &str| account.roles.iter().any(|r| r == role);
    let (ok, kind, roles) = match need {
        Need::Account => return Ok(()),
        Need::All(roles) => (roles.iter().all(|r| has(r)), "all", roles),
        Need::Any(roles) => (roles.iter().any(|r| has(r)), "any", roles),
    };
    if ok {
        Ok(())
    } else {
        Err(message(
            StatusCode::UNAUTHORIZED,
            format!(
                "{kind} of the following roles must be present: {}",
                roles.join(", ")
            ),
        ))
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, token) = text.split_once(':')?;
    Some((user.to_string(), token.to_string()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
