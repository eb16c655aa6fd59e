//! `doctor`: checks this host for everything the driver needs before a job finds out, and
//! says how to fix each problem. Doctor is a consumer like the stages: it may use the warm
//! pool's records, settings, Orchard's client, guest, host, the runtime and the shared
//! kinds; never the stages or the backends, and nothing imports it but `main` and `cli`.
//!
//! Every check ends as pass, warn, fail or skip (a check that does not apply here, such as
//! the Mach-O checks on Linux). Each external command is bounded to a few seconds, nothing
//! on the host is changed, and the report goes to stdout as text or JSON: doctor is an
//! operator's command, not a stage. It exits with the system-failure code when a check
//! failed.
//!
//! One file per family of checks: [`host`] (gitlab-runner, directories, ssh, GUI session),
//! [`macho`] (the binaries' `LC_UUID`), [`tart`] (Tart, its VMs and images), [`network`],
//! [`neighbours`] (other VMs on the shared network without Softnet), [`registry`] (registry
//! logins in the runner user's keychain), [`runner_toml`] (gitlab-runner's config.toml),
//! [`state`] (the state directory), [`warm`] (the warm pool) and [`orchard`] (an Orchard
//! controller); [`probe`] runs their bounded commands, [`tart_list`] reads `tart list` and
//! [`disk`] free space for them.
//!
//! Each check is a function that returns its line of the report, a [`report::Check`] (a few
//! return several, such as one per directory or per `[[runners]]` section, or none that do
//! not apply). What later checks need is returned beside it, never read back from the
//! report: the tart and gitlab-runner checks return the executable they found
//! ([`probe::Located`]), and `tart list` is read once here and handed to the checks that
//! use it. [`doctor`] calls the checks in a fixed order and collects their lines; [`report`]
//! only renders them (text or JSON) and gives the verdict.

mod disk;
mod host;
mod macho;
mod neighbours;
mod network;
mod orchard;
mod probe;
mod registry;
mod report;
mod runner_toml;
mod state;
mod tart;
mod tart_list;
mod warm;

use std::path::PathBuf;

use crate::failure::StageResult;
use crate::model::TransportKind;
use crate::orchard::settings::Backend;
use crate::settings::Options;
use crate::settings::Settings;

pub use report::Format;
use report::{finish, Check};

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub options: Options,

    /// Output format: `text` (one line per check) or `json` (an array of {check, status, detail, fix})
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// gitlab-runner's config.toml, to check its `concurrent`, exec paths, shell and timeouts against these options
    #[arg(long, value_name = "FILE")]
    pub runner_config: Option<PathBuf>,

    /// Path to the gitlab-runner executable [default: gitlab-runner, looked up on PATH]
    #[arg(long, value_name = "PATH")]
    pub gitlab_runner: Option<String>,

    #[command(flatten)]
    pub network: network::NetworkArgs,
}

pub fn doctor(args: &DoctorArgs) -> StageResult {
    let (settings, options) = load_settings(&args.options);
    let mut checks = vec![options];
    if settings.backend == Backend::Orchard {
        checks.extend(orchard::check(&settings));
        return finish(args.format, &checks);
    }
    let tart = tart::check_tart(&settings);
    checks.push(tart.check);
    let tart = tart.path;
    let runner = host::check_gitlab_runner(args.gitlab_runner.as_deref());
    checks.push(runner.check);
    checks.push(macho::check_runner_lc_uuid(runner.path.as_deref()));
    checks.push(macho::check_driver_lc_uuid());
    let runner_config = args.runner_config.as_deref();
    checks.extend(runner_toml::check_runner_config(runner_config, &settings));
    let list = tart.as_deref().map(tart_list::tart_list);
    checks.push(tart::check_macos_limit(&settings, list.as_ref()));
    checks.push(tart::check_foreign_vms(&settings));
    checks.extend(host::check_directories(&settings));
    checks.push(tart::check_tart_home(list.as_ref()));
    checks.extend(tart::check_vms(&settings, list.as_ref()));
    checks.push(state::check_state_dir(&settings));
    checks.push(state::check_socket_path(&settings));
    checks.push(host::check_ssh(&settings));
    checks.push(network::check_tool_path());
    checks.push(network::check_softnet(&settings));
    checks.push(neighbours::check_neighbours(&settings));
    checks.push(registry::check_keychain_logins(&settings));
    checks.push(network::check_dhcp_pool(&args.network, &settings));
    checks.push(network::check_local_network(tart.as_deref(), list.as_ref()));
    checks.push(host::check_gui_session());
    checks.push(warm::check_pool(&settings));
    finish(args.format, &checks)
}

/// The admin's options and the check of them; when they do not load, the defaults (with
/// the given tart and state dir) so that the other checks still run.
fn load_settings(options: &Options) -> (Settings, Check) {
    match Settings::load(options) {
        Ok(s) => {
            let check = options_check(options, &s);
            (s, check)
        }
        Err(e) => {
            let check = Check::fail(
                "driver options",
                format!("{e:#}"),
                "correct that option on the command line or in the --config file; every stage would fail the same way",
            );
            (fallback_settings(options), check)
        }
    }
}

fn options_check(options: &Options, s: &Settings) -> Check {
    let from = match &options.config {
        Some(file) => format!("flags and {}", file.display()),
        None => "flags and defaults".to_string(),
    };
    let transport = match s.transport {
        TransportKind::Ssh => "ssh",
        TransportKind::Exec => "exec",
        TransportKind::Auto => "auto",
    };
    Check::pass(
        "driver options",
        format!(
            "valid ({from}): concurrency {}, macOS VM limit {}, boot timeout {}s, transport {transport}",
            s.concurrency, s.macos_vm_limit, s.timeout_secs,
        ),
    )
}

/// The defaults, with the given tart, state dir and backend (or the plain defaults).
fn fallback_settings(options: &Options) -> Settings {
    let mut fallback = Options {
        tart_executable: options.tart_executable.clone(),
        state_dir: options.state_dir.clone(),
        ..Default::default()
    };
    fallback.orchard.backend = options.orchard.backend;
    Settings::load(&fallback)
        .or_else(|_| Settings::load(&Options::default()))
        .expect("default settings are valid")
}
