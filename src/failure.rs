//! How a stage ends when it does not succeed, and the exit code gitlab-runner reads from it.
//!
//! gitlab-runner distinguishes the user's fault (a build failure: `script_failure`, not
//! retried) from ours or the host's (a system failure: `runner_system_failure`, prepare is
//! retried). Every error path in the driver ends up as one of these variants, so that no
//! infrastructure problem is ever blamed on the user's script.

use std::fmt;

/// The outcome of a stage that did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The user's script exited with this non-zero code.
    Build(i32),
    /// The job asked for something the admin's configuration does not allow, or gave a
    /// malformed value. This is the job author's to fix, so it is a build failure.
    Rejected(anyhow::Error),
    /// The VM, Tart, SSH or the host failed. The runner may retry.
    System(anyhow::Error),
}

impl Failure {
    pub fn rejected(message: impl fmt::Display) -> Self {
        Failure::Rejected(anyhow::anyhow!("{message}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::System(error)
    }
}

pub type StageResult = Result<(), Failure>;

/// The two exit codes gitlab-runner hands every stage, read from the environment as GitLab
/// recommends (they have been 1 and 2 since runner 12.1).
#[derive(Debug, Clone)]
pub struct ExitCodes {
    pub build_failure: i32,
    pub system_failure: i32,
    /// Where the runner (17.9+) reads the script's real exit code from.
    pub build_exit_code_file: Option<std::path::PathBuf>,
}

impl ExitCodes {
    pub fn from_env() -> Self {
        let code = |name: &str, default: i32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        ExitCodes {
            build_failure: code("BUILD_FAILURE_EXIT_CODE", 1),
            system_failure: code("SYSTEM_FAILURE_EXIT_CODE", 2),
            build_exit_code_file: std::env::var_os("BUILD_EXIT_CODE_FILE")
                .filter(|v| !v.is_empty())
                .map(Into::into),
        }
    }

    /// Records the script's exit code for the runner and returns the process exit code.
    /// The runner never clears the file between stages, so success removes it: a stale
    /// code from an earlier stage must never be read back.
    pub fn settle(&self, result: &StageResult, stage: &str) -> i32 {
        match result {
            Ok(()) => {
                if let Some(file) = &self.build_exit_code_file {
                    let _ = std::fs::remove_file(file);
                }
                0
            }
            Err(Failure::Build(code)) => {
                self.write_exit_code(*code);
                self.build_failure
            }
            Err(Failure::Rejected(error)) => {
                eprintln!("ERROR: {stage}: {error:#}");
                self.write_exit_code(1);
                self.build_failure
            }
            Err(Failure::System(error)) => {
                eprintln!("ERROR: {stage} failed: {error:#}");
                if let Some(file) = &self.build_exit_code_file {
                    let _ = std::fs::remove_file(file);
                }
                self.system_failure
            }
        }
    }

    fn write_exit_code(&self, code: i32) {
        if let Some(file) = &self.build_exit_code_file {
            if let Err(error) = std::fs::write(file, format!("{code}\n")) {
                eprintln!(
                    "WARNING: could not write the exit code to {}: {error}",
                    file.display()
                );
            }
        }
    }
}
