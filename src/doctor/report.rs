//! The doctor's report: every check's outcome (pass, warn, fail or skip, with what to do),
//! printed as text (one line per check and a summary) or as JSON, and the verdict.

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

#[derive(Default)]
pub(super) struct Report {
    pub(super) checks: Vec<Check>,
}

impl Report {
    pub(super) fn add(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            check: check.to_string(),
            status,
            detail,
            fix,
        });
    }
    pub(super) fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Status::Pass, detail.into(), None);
    }
    pub(super) fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Warn, detail.into(), Some(fix.into()));
    }
    pub(super) fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Fail, detail.into(), Some(fix.into()));
    }
    pub(super) fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Status::Skip, detail.into(), None);
    }
    pub(super) fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
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
        out.push_str(&format!(
            "\n{} passed, {} warning{}, {} failed, {} skipped\n",
            self.count(Status::Pass),
            self.count(Status::Warn),
            if self.count(Status::Warn) == 1 {
                ""
            } else {
                "s"
            },
            self.count(Status::Fail),
            self.count(Status::Skip)
        ));
        out
    }
}

/// Prints the report; fails when a check failed.
pub(super) fn finish(format: Format, r: &Report) -> StageResult {
    match format {
        Format::Text => print!("{}", r.text()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&r.checks).expect("checks serialize")
        ),
    }
    let failed: Vec<&str> = r
        .checks
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
