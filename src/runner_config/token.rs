//! A runner's authentication token, read from its file and never shown: its `Debug` and
//! `Display` say `<redacted>`.

use std::fmt;
use std::fs;

use anyhow::{bail, Result};

use super::spec::RunnerSpec;

/// A token read from a file. Its `Debug` and `Display` never show the value.
pub(super) struct Token(pub(super) String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a runner's token file; returns the token and an optional warning.
pub(super) fn read_token(r: &RunnerSpec) -> Result<(Token, Option<String>)> {
    let path = &r.token_file;
    let raw = fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read token file {} for runner {:?}: {e}; create it (readable by the runner's user, mode 0600) containing the runner's glrt- authentication token",
            path.display(),
            r.name
        )
    })?;
    let text = String::from_utf8(raw).map_err(|_| {
        anyhow::anyhow!(
            "token file {} for runner {:?} is not UTF-8 text; it must contain only the glrt- authentication token",
            path.display(),
            r.name
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!(
            "token file {} for runner {:?} is empty; write the runner's glrt- authentication token into it",
            path.display(),
            r.name
        );
    }
    if token.chars().any(char::is_whitespace) {
        bail!(
            "token file {} for runner {:?} contains whitespace inside the token; it must contain only the token",
            path.display(),
            r.name
        );
    }
    let warning = (!token.starts_with("glrt-")).then(|| {
        format!(
            "the token in {} for runner {:?} does not start with glrt-; runner authentication tokens created in GitLab 16+ do",
            path.display(),
            r.name
        )
    });
    Ok((Token(token.to_owned()), warning))
}
