//! What a real, multi-user Mac does that a quiet test host would not: Tart's housekeeping
//! warnings, `--nested` rules, the guest user's login environment, macOS VMs of other users
//! filling Apple's limit, and other users' VMs answering for this job's MAC address. Each
//! test drives whole jobs against the simulator made as strict as a Mac.

mod common;

use std::time::{Duration, Instant};

use common::{skip_e2e, Bed};
use harness::sim::Image;
use harness::{run_job, Job, JobOutcome, Verdict};

const IMAGE: &str = "ghcr.io/acme/mac-fidelity:latest";

#[track_caller]
fn assert_system_failure(out: &JobOutcome, message: &str) {
    assert!(
        matches!(out.verdict, Verdict::SystemFailure { .. }),
        "verdict {:?}\n{}",
        out.verdict,
        out.log
    );
    out.assert_log_contains(message);
}

// --- Tart's housekeeping warning (point 1) ---------------------------------------------------

#[test]
fn cleanup_reads_tarts_message_after_a_garbage_collection_warning() {
    if skip_e2e() {
        return;
    }
    // Another Tart process collected an entry of $TART_HOME/tmp first: every command but
    // pull and clone starts its stderr with Tart's warning.
    let bed = Bed::new();
    let job = bed.direct_job(common::MACOS);
    let mut cmd = bed.stage_command(&job, &["cleanup"]);
    let out = cmd
        .env("TART_SIM_GC_WARNING", "1")
        .output()
        .expect("cleanup");
    // Nothing to clean: Tart says "does not exist", which is fine, under its warning.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.assert_nothing_left();
}

#[test]
fn a_vm_without_ip_is_reported_as_such_after_a_garbage_collection_warning() {
    if skip_e2e() {
        return;
    }
    let bed = Bed::new()
        .image(IMAGE, Image::darwin().never_ip())
        .option(["--timeout", "2"]);
    let started = Instant::now();
    let out = run_job(
        &bed.runner().env("TART_SIM_GC_WARNING", "1"),
        &Job::new().image(IMAGE).script(["true"]),
    );
    assert_system_failure(&out, "no IP address within the boot timeout");
    assert!(
        !out.log.contains("garbage collection"),
        "Tart's housekeeping warning was taken for its message:\n{}",
        out.log
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    bed.assert_nothing_left_within(Duration::from_secs(10));
}
