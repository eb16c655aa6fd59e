//! Test support: runs a GitLab custom-executor driver exactly as gitlab-runner 19.x does.
//!
//! ```no_run
//! use harness::{Job, Runner, run_job};
//! let runner = Runner::with_subcommands("/path/to/driver").builds_dir("builds").cache_dir("cache");
//! let job = Job::new().image("ghcr.io/cirruslabs/macos-tahoe-base:latest").script(["echo hi"]);
//! let out = run_job(&runner, &job);
//! out.assert_success();
//! ```
//!
//! See `README.md` for the API overview and the deviations from gitlab-runner.

mod job;
mod process;
mod run;
mod runner;
pub mod script;
pub mod sim;

pub use job::{Job, Variable, When};
pub use process::{Stream, Termination};
pub use run::{
    go_duration, run_job, ConfigOutput, DriverInfo, JobOutcome, StageKind, StageRecord,
    StageResult, Verdict,
};
pub use runner::Runner;
