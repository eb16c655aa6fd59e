//! Trust boundaries between jobs sharing a host: a job's image cannot take more of the host
//! than each VM's share, a job without credentials cannot use another project's private
//! image or the runner user's registry logins, a job's guest cannot reach a neighbouring
//! job's VM, and a cancel ends a stage's remote processes whatever the script did with its
//! output. Every wait has a bound.

mod common;

use common::{skip_e2e, Bed};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};

const GREEDY: &str = "ghcr.io/hostile/greedy:latest";

#[test]
fn an_image_whose_minimum_exceeds_the_per_vm_share_fails_the_job_instead_of_taking_the_host() {
    if skip_e2e() {
        return;
    }
    // 4096 CPUs and 4 TiB: more than any host's share per VM.
    let bed = Bed::new().image(GREEDY, Image::linux().minimum(4096, 4 << 20));
    let out = run_job(&bed.runner(), &Job::new().image(GREEDY).script(["true"]));
    assert_eq!(
        out.verdict,
        Verdict::BuildFailure { exit_code: 1 },
        "{}",
        out.log
    );
    out.assert_log_contains("needs at least 4096 CPUs");
    out.assert_log_contains("use a smaller image");
    bed.assert_nothing_left();
}
