//! Debug lines (every Tart command, sweep decisions, slot waits) in the job log.
//!
//! The admin turns them on with `TART_DRIVER_LOG` (e.g. `debug`) in the runner's
//! environment; a job may ask with `TART_DRIVER_DEBUG=true` only where the admin allows it
//! (`debug` in `job_overrides`, not in the default list). Debug lines never contain the
//! environment or a secret, and in a job's log they never name another job's VM: the sweep
//! works on other jobs' VMs, and their names carry other runners' tokens and job ids.

use std::sync::OnceLock;

use regex::Regex;

use crate::model::Overridable;

/// The admin's switch, read before anything else; true when debug lines are on.
pub fn init_from_admin() -> bool {
    match std::env::var("TART_DRIVER_LOG") {
        Ok(spec) if !spec.is_empty() => {
            init(tracing_subscriber::EnvFilter::new(spec));
            true
        }
        _ => false,
    }
}

/// A job's `TART_DRIVER_DEBUG`, once the stage knows the admin's `job_overrides`; `own_vm`
/// is the only VM name the job's log may show.
pub fn init_for_job(allowed: &[Overridable], own_vm: &str) {
    let _ = OWN_VM.set(own_vm.to_string());
    if std::env::var("TART_DRIVER_LOG").is_ok_and(|s| !s.is_empty()) {
        return; // the admin's setting is in force already
    }
    let wanted = std::env::var("CUSTOM_ENV_TART_DRIVER_DEBUG")
        .ok()
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    if !wanted {
        return;
    }
    if allowed.contains(&Overridable::Debug) {
        init(tracing_subscriber::EnvFilter::new("debug"));
    } else {
        eprintln!("WARNING: the job sets TART_DRIVER_DEBUG, but this runner does not let jobs turn on debug output: ignored (the admin can add `debug` to job_overrides)");
    }
}

fn init(filter: tracing_subscriber::EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

static OWN_VM: OnceLock<String> = OnceLock::new();

/// `text` with every VM name of this driver but the job's own replaced, when a job is
/// known (stages); unchanged for the admin's commands (`gc`, `doctor`).
pub fn redact(text: &str) -> String {
    let Some(own) = OWN_VM.get() else {
        return text.to_string();
    };
    static NAME: OnceLock<Regex> = OnceLock::new();
    let name =
        NAME.get_or_init(|| Regex::new(r"tartdrv-[A-Za-z0-9]+-[0-9]+").expect("valid regex"));
    name.replace_all(text, |m: &regex::Captures| {
        if &m[0] == own {
            own.clone()
        } else {
            "<another job's VM>".to_string()
        }
    })
    .into_owned()
}

/// Prints one job-log line for a finished phase, with its duration.
pub fn phase_done(what: &str, started: std::time::Instant) {
    eprintln!("{what} ({:.1}s)", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_jobs_vm_names_are_redacted_and_the_own_is_kept() {
        let _ = OWN_VM.set("tartdrv-mine1-7".into());
        let own = OWN_VM.get().unwrap().clone();
        let text = format!("running `tart stop tartdrv-abc123-42` then `tart delete {own}`");
        let out = redact(&text);
        assert!(!out.contains("abc123") && !out.contains("42`"), "{out}");
        assert!(out.contains(&own), "{out}");
    }
}
