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
//! [`disk`] free space for them, and [`report`] prints the outcome.

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
use report::{finish, Report, Status};

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
    let mut r = Report::default();
    let settings = load_settings(&args.options, &mut r);
    if settings.backend == Backend::Orchard {
        orchard::check(&settings, &mut r);
        return finish(args.format, &r);
    }
    let tart = tart::check_tart(&settings, &mut r);
    let runner = host::check_gitlab_runner(args.gitlab_runner.as_deref(), &mut r);
    macho::check_lc_uuid(runner.as_deref(), &mut r);
    match &args.runner_config {
        Some(path) => runner_toml::check_runner_config(path, &settings, &mut r),
        None => r.skip(
            "config.toml",
            "not checked: pass --runner-config /path/to/config.toml to compare gitlab-runner's settings with these options",
        ),
    }
    let list = tart.as_deref().map(tart_list::tart_list);
    tart::check_macos_limit(&settings, list.as_ref(), &mut r);
    let seen = crate::host::foreign::survey(
        crate::host::tart_home::home().as_deref(),
        &settings.state_dir,
    );
    let status = [Status::Pass, Status::Warn][usize::from(seen.fix.is_some())];
    r.add(
        "VMs not started by this driver",
        status,
        seen.detail,
        seen.fix,
    );
    host::check_directories(&settings, &mut r);
    tart::check_tart_home(list.as_ref(), &mut r);
    tart::check_vms(&settings, list.as_ref(), &mut r);
    state::check_state_dir(&settings, &mut r);
    state::check_socket_path(&settings, &mut r);
    host::check_ssh(&settings, &mut r);
    network::check_tool_path(&mut r);
    network::check_softnet(&settings, &mut r);
    neighbours::check_neighbours(&settings, &mut r);
    registry::check_keychain_logins(&settings, &mut r);
    network::check_dhcp_pool(&args.network, &settings, &mut r);
    network::check_local_network(tart.as_deref(), list.as_ref(), &mut r);
    host::check_gui_session(&mut r);
    warm::check_pool(&settings, &mut r);
    finish(args.format, &r)
}

/// The admin's options; when they do not load, the defaults (with the given tart and state
/// dir) so that the other checks still run.
fn load_settings(options: &Options, r: &mut Report) -> Settings {
    match Settings::load(options) {
        Ok(s) => {
            let from = match &options.config {
                Some(file) => format!("flags and {}", file.display()),
                None => "flags and defaults".to_string(),
            };
            r.pass(
                "driver options",
                format!(
                    "valid ({from}): concurrency {}, macOS VM limit {}, boot timeout {}s, transport {}",
                    s.concurrency,
                    s.macos_vm_limit,
                    s.timeout_secs,
                    match s.transport {
                        TransportKind::Ssh => "ssh",
                        TransportKind::Exec => "exec",
                        TransportKind::Auto => "auto",
                    }
                ),
            );
            s
        }
        Err(e) => {
            r.fail(
                "driver options",
                format!("{e:#}"),
                "correct that option on the command line or in the --config file; every stage would fail the same way",
            );
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
    }
}
