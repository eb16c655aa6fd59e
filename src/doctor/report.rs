//! The doctor's report: what one check returns (its name, pass, warn, fail or skip, the
//! detail and what to do), and the rendering of all of them as text (one line per check and
//! a summary) or as JSON, with the verdict. Nothing here runs a check.

use anyhow::anyhow;
use serde::Serialize;

use crate::failure::{Failure, StageResult};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Check {
    pub(super) check: String,
    pub(super) status: Status,
    pub(super) detail: String,
    pub(super) fix: Option<String>,
}

impl Check {
    pub(super) fn new(check: &str, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            check: check.to_string(),
            status,
            detail,
            fix,
        }
    }
    pub(super) fn pass(check: &str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Pass, detail.into(), None)
    }
    pub(super) fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, Status::Warn, detail.into(), Some(fix.into()))
    }
    pub(super) fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, Status::Fail, detail.into(), Some(fix.into()))
    }
    pub(super) fn skip(check: &str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Skip, detail.into(), None)
    }
}

fn count(checks: &[Check], status: Status) -> usize {
    checks.iter().filter(|c| c.status == status).count()
}

/// One line per check (and its fix), then the summary.
fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out.push_str(&format!("{tag}  {}: {}\n", c.check, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let warnings = count(checks, Status::Warn);
    out.push_str(&format!(
        "\n{} passed, {warnings} warning{}, {} failed, {} skipped\n",
        count(checks, Status::Pass),
        if warnings == 1 { "" } else { "s" },
        count(checks, Status::Fail),
        count(checks, Status::Skip)
    ));
    out
}

/// Prints the report; fails when a check failed.
pub(super) fn finish(format: Format, checks: &[Check]) -> StageResult {
    match format {
        Format::Text => print!("{}", text(checks)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(checks).expect("checks serialize")
        ),
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.check.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::System(anyhow!(
            "{} check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        )))
    }
}
