//! Fault points for the end-to-end tests: named moments in the stages where a test kills
//! the process or holds it, to land exactly where no sleep could (between a warm VM's
//! eviction and the job taking its slot, or between a claim's steps).
//!
//! Compiled in only with the `e2e` feature (the test build); a release or Nix build has an
//! empty `point`. In the test build, `TARTDRV_FAULT_AT=<point>` picks the point and
//! `TARTDRV_FAULT=kill` (the default) makes the process SIGKILL itself there, as a crash
//! would; `TARTDRV_FAULT=pause` writes `<TARTDRV_FAULT_DIR>/<point>.reached` and waits (up to
//! 5 minutes) for the test to create `<point>.go`. Jobs cannot set these: gitlab-runner
//! hands job variables over as `CUSTOM_ENV_*` only.

#[cfg(feature = "e2e")]
pub fn point(name: &str) {
    use std::time::{Duration, Instant};
    if std::env::var("TARTDRV_FAULT_AT").ok().as_deref() != Some(name) {
        return;
    }
    if std::env::var("TARTDRV_FAULT").ok().as_deref() == Some("pause") {
        let dir =
            std::path::PathBuf::from(std::env::var_os("TARTDRV_FAULT_DIR").unwrap_or_default());
        let _ = std::fs::write(
            dir.join(format!("{name}.reached")),
            std::process::id().to_string(),
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        while !dir.join(format!("{name}.go")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    // SAFETY: kill(2) of this very process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[cfg(not(feature = "e2e"))]
#[inline(always)]
pub fn point(_name: &str) {}
