//! `try-job`: one whole GitLab job through gitlab-runner-tart-driver on the Tart simulator,
//! for people who want to see the driver work without a Mac. Run it through `./try.sh`.

use std::path::PathBuf;
use std::time::Duration;

use harness::sim::{Image, SimHost};
use harness::{run_job, Job, Runner, Verdict};

const IMAGE: &str = "ghcr.io/cirruslabs/macos-sequoia-base:latest";

fn main() {
    let driver = sibling("gitlab-runner-tart-driver");
    let sim = SimHost::new().with_image(IMAGE, Image::darwin().agent(true).boot_delay_ms(1500));
    let state = sim.root().join("driver-state");
    let args = |stage: &str| {
        vec![
            stage.to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ]
    };
    let runner = Runner::new(&driver)
        .config_args(args("config"))
        .prepare_args(args("prepare"))
        .run_args(args("run"))
        .cleanup_args(args("cleanup"))
        .envs(sim.env())
        .graceful_kill_timeout(Duration::from_secs(30));
    let job = Job::new()
        .project("demo/hello-tart")
        .image(IMAGE)
        .before_script(["sw_vers 2>/dev/null || uname -a"])
        .script([
            "echo \"Hello from $(whoami) in the VM\"",
            "echo \"building in $CI_PROJECT_DIR\"",
            "for w in one two three; do echo \"step $w\"; done",
        ])
        .after_script(["echo done"])
        .cache(true)
        .artifacts(true);
    println!(
        "Running a job with image {IMAGE} on the Tart simulator (driver: {})\n",
        driver.display()
    );
    let outcome = run_job(&runner, &job);
    println!("{}", outcome.log);
    println!(
        "----- cleanup (gitlab-runner's own log) -----\n{}",
        outcome.runner_log
    );
    println!("----- stage timings -----");
    for (stage, took) in outcome.stage_durations() {
        println!("{stage:<28} {:>7.2}s", took.as_secs_f64());
    }
    let leaks = sim.leaks(None, None);
    println!(
        "\nverdict: {:?}; left behind: {}",
        outcome.verdict,
        if leaks.is_empty() {
            "nothing".to_string()
        } else {
            format!("{leaks:?}")
        }
    );
    std::process::exit(if outcome.verdict == Verdict::Success && leaks.is_empty() {
        0
    } else {
        1
    });
}

/// A binary built next to this one (`target/<profile>/`).
fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let path = me.parent().expect("target dir").join(name);
    if !path.exists() {
        eprintln!(
            "{} is missing: run `cargo build --workspace` first (./try.sh does)",
            path.display()
        );
        std::process::exit(2);
    }
    path
}
