//! gitlab-runner-tart-driver: a GitLab Runner custom-executor driver that runs each job in
//! a fresh Tart VM. `main` only parses the command line, dispatches to a stage and turns
//! the stage's outcome into the exit code gitlab-runner expects.

mod backend;
mod cli;
mod clock;
mod doctor;
mod failure;
mod fault;
mod guest;
mod host;
mod job;
mod logging;
mod manuals;
mod model;
mod orchard;
mod rt;
mod runner_config;
mod settings;
mod stages;
#[cfg(test)]
mod testing;
mod warm;

use clap::Parser;

use cli::{Cli, Command};
use failure::{ExitCodes, Failure};

fn main() {
    if let Some(code) = guest::transport::askpass::answer_if_asked() {
        std::process::exit(code);
    }
    host::tool_path::complete_path();
    host::tart_home::settle_home_vars();
    logging::init_from_admin();
    let codes = ExitCodes::from_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                // A bad flag in config.toml is the admin's to fix: a system failure.
                _ => codes.system_failure,
            };
            std::process::exit(code);
        }
    };
    let (stage, result) = match &cli.command {
        Command::Config(args) => ("config", stages::config::config(&args.options)),
        Command::Prepare(args) => ("prepare", stages::prepare::prepare(&args.options)),
        Command::Run(args) => (
            "run",
            stages::run::run(&args.options, &args.script, &args.stage),
        ),
        Command::Cleanup(args) => ("cleanup", stages::cleanup::cleanup(&args.options)),
        Command::Gc(args) => (
            "gc",
            stages::gc::gc(&args.options, args.dry_run, args.prune_images_older_than),
        ),
        Command::Warm(args) => (
            "warm",
            stages::warm::warm(&args.options, args.pull, args.background),
        ),
        Command::Doctor(args) => ("doctor", doctor::doctor(args)),
        Command::RunnerConfig(args) => (
            "runner-config",
            runner_config::execute(args).map_err(Failure::System),
        ),
        Command::GenerateManpages { dir } => (
            "generate-manpages",
            manuals::man_pages(dir).map_err(Failure::System),
        ),
        Command::Completions { shell } => (
            "completions",
            manuals::completions(*shell).map_err(Failure::System),
        ),
        Command::OrchardProxy(args) => (
            "orchard-proxy",
            stages::orchard_proxy::orchard_proxy(
                &args.options,
                &args.vm,
                args.port,
                args.retry_for,
            ),
        ),
        Command::Supervise(args) => (
            "supervise",
            host::supervisor::supervise(args).map_err(Failure::System),
        ),
    };
    std::process::exit(codes.settle(&result, stage));
}
