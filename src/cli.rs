//! The command line: stages, their arguments, and the admin options every stage accepts.
//!
//! Compatible with the original Python driver: the same subcommands and flags, so a
//! config.toml written for it keeps working. Every option can also come from the YAML
//! file named by `--config`; a flag on the command line wins over the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::Options;

#[derive(Parser, Debug)]
#[command(
    name = "gitlab-runner-tart-driver",
    version,
    disable_version_flag = true,
    about = "GitLab Runner custom-executor driver: each job in a fresh Tart VM",
    long_about = "GitLab Runner custom-executor driver: each job runs in a fresh Tart VM \
                  cloned from an OCI image, and the VM is deleted afterwards.\n\n\
                  gitlab-runner calls the stages config, prepare, run and cleanup; see \
                  `gitlab-runner-tart-driver <stage> --help`."
)]
pub struct Cli {
    /// Print the version (`-v` as in the original driver)
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: (),
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Config stage: print the JSON gitlab-runner reads (builds and cache dirs, driver name).
    Config(StageArgs),
    /// Prepare stage: clone the job's image, boot the VM and open one SSH connection.
    Prepare(StageArgs),
    /// Run stage: run one script of the job inside the VM.
    Run(RunArgs),
    /// Cleanup stage: stop and delete the job's VM and everything the job left on the host.
    Cleanup(StageArgs),
    /// Remove VMs, connections and state of jobs whose driver is gone.
    Gc(GcArgs),
    /// Fill the warm pool (--warm-pool): boot VMs ahead of jobs; returns once they answer.
    Warm(WarmArgs),
    /// Check this host for everything the driver needs, with a fix for each problem.
    Doctor(crate::doctor::DoctorArgs),
    /// Write gitlab-runner's config.toml from a declarative spec and token files.
    RunnerConfig(crate::runner_config::RunnerConfigArgs),
    /// Write man pages (one per subcommand) into DIR.
    GenerateManpages {
        /// Output directory
        dir: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Internal: watches `tart run` for one VM. Started by prepare, detached.
    #[command(hide = true)]
    Supervise(crate::host::supervisor::SuperviseArgs),
    /// Internal: ssh's ProxyCommand to an Orchard VM's port through the controller.
    #[command(hide = true)]
    OrchardProxy(ProxyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StageArgs {
    #[command(flatten)]
    pub options: Options,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The script gitlab-runner generated for this stage (a file on this host).
    pub script: PathBuf,
    /// The stage name (prepare_script, get_sources, build_script, ...); any name works.
    pub stage: String,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Args, Debug, Clone)]
pub struct GcArgs {
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete cached OCI images not used for this many days (`tart prune`).
    #[arg(long, value_name = "DAYS")]
    pub prune_images_older_than: Option<u32>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The Orchard VM's name
    pub vm: String,
    /// The VM's TCP port (22 for SSH)
    pub port: u16,
    /// Seconds to keep retrying before giving up [default: --timeout, the boot timeout]
    #[arg(long, value_name = "SECONDS")]
    pub retry_for: Option<u64>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Args, Debug, Clone)]
pub struct WarmArgs {
    /// Pull the warm images first, so a new digest is booted (what `gc` does)
    #[arg(long)]
    pub pull: bool,
    /// Started by a stage: wait for a replenisher already at work, and do not retry images whose boot failed
    #[arg(long, hide = true)]
    pub background: bool,
    #[command(flatten)]
    pub options: Options,
}
