//! Doctor checks of the host's side of the VMs' network and of the tools Tart needs from
//! PATH: where `tart` and `softnet` were found, the DHCP pool, and whether this process may connect to a running VM at all (macOS 15+ Local Network
//! privacy).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::probe::{is_executable, resolve, run_bounded};
use super::report::Check;
use super::tart_list::{entry_is_running, entry_name, TartList};
use crate::guest::transport::reach::{self, Reach};
use crate::host::dhcp::{self, PoolUse};
use crate::host::tool_path;
use crate::settings::Settings;

/// Where doctor reads bootpd's state; the defaults are macOS's own files.
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// bootpd's lease file, which `tart ip` reads
    #[arg(long, value_name = "FILE", default_value = dhcp::LEASES_FILE)]
    pub dhcp_leases: PathBuf,

    /// bootpd's configuration, for its lease time and pool size (absent: 24 h, 253 addresses)
    #[arg(long, value_name = "FILE", default_value = dhcp::BOOTPD_PLIST)]
    pub bootpd_plist: PathBuf,
}

/// Says which tools were found only outside the PATH the driver was started with.
pub fn check_tool_path() -> Check {
    const NAME: &str = "PATH";
    let path = std::env::var("PATH").unwrap_or_default();
    let added = tool_path::added();
    if added.is_empty() {
        return Check::pass(NAME, "tart and softnet are looked up on PATH as given");
    }
    let found: Vec<String> = added
        .iter()
        .map(|a| format!("`{}` in {}", a.tool, a.dir.display()))
        .collect();
    Check::warn(
        NAME,
        format!(
            "found {} only outside the PATH this process was started with (launchd gives services /usr/bin:/bin:/usr/sbin:/sbin); every stage appends that directory to its PATH itself, so jobs work",
            found.join(" and ")
        ),
        format!(
            "nothing is required; to make it explicit, put the directory on gitlab-runner's PATH (its launchd plist's EnvironmentVariables) or give --tart-executable; PATH is now {path}"
        ),
    )
}

/// Counts unexpired leases against bootpd's pool: each VM with a new MAC holds an address
/// for the whole lease time, whether it still runs or not.
pub fn check_dhcp_pool(args: &NetworkArgs, settings: &Settings) -> Check {
    const NAME: &str = "DHCP pool";
    if settings.softnet || settings.bridged.is_some() {
        return Check::skip(
            NAME,
            "VMs use Softnet or bridged networking, not bootpd's shared network",
        );
    }
    if !args.dhcp_leases.exists() && !cfg!(target_os = "macos") {
        return Check::skip(
            NAME,
            format!(
                "no {} (not a macOS host; pass --dhcp-leases to check a copy)",
                args.dhcp_leases.display()
            ),
        );
    }
    let pool = match PoolUse::read(&args.dhcp_leases, &args.bootpd_plist) {
        Ok(pool) => pool,
        Err(e) => {
            return Check::warn(
                NAME,
                format!("{e:#}: `tart ip` fails on such a file"),
                format!(
                    "while no VM runs, `sudo rm {}`; bootpd writes a new one",
                    args.dhcp_leases.display()
                ),
            );
        }
    };
    if pool.exhausted() {
        Check::fail(
            NAME,
            format!("{}: exhausted, new VMs boot without an IP", pool.describe()),
            dhcp::FIX,
        )
    } else if let Some(line) = pool.malformed.first() {
        // Tart refuses the whole file; the driver's own reading only skips the bad lines.
        Check::warn(
            NAME,
            format!(
                "{}; but line {line} of {} (and {} more) is not in bootpd's format, and Tart refuses the whole file (\"unexpected DHCPD leases file format\"): `tart ip` fails, so VMs get no IP",
                pool.describe(),
                args.dhcp_leases.display(),
                pool.malformed.len() - 1
            ),
            format!(
                "while no VM runs, `sudo rm {}`; bootpd writes a new one",
                args.dhcp_leases.display()
            ),
        )
    } else if pool.nearly_exhausted() {
        Check::warn(
            NAME,
            format!(
                "{}: nearly exhausted; once full, new VMs boot without an IP",
                pool.describe()
            ),
            dhcp::FIX,
        )
    } else {
        Check::pass(NAME, pool.describe())
    }
}

/// Connects to SSH in a running VM, as a job's prepare does. On macOS 15+ a process
/// without the Local Network permission gets "No route to host" although the VM has an IP.
pub fn check_local_network(tart: Option<&Path>, list: Option<&TartList>) -> Check {
    const NAME: &str = "connection to a VM";
    let (Some(tart), Some(Ok(entries))) = (tart, list.map(|l| &l.entries)) else {
        return Check::skip(NAME, "no `tart list` to find a running VM in");
    };
    let Some(vm) = entries
        .iter()
        .filter(|e| entry_is_running(e))
        .map(entry_name)
        .next()
    else {
        return Check::skip(
            NAME,
            "no VM runs: run doctor again while a job runs to test that this host may connect to its VMs (Local Network privacy on macOS 15+)",
        );
    };
    let ip = match run_bounded(tart, &["ip", vm], Duration::from_secs(5)) {
        Ok(out) if out.ok() => out.stdout.trim().to_string(),
        Ok(out) => return Check::skip(NAME, format!("VM {vm} has no IP: {}", out.message())),
        Err(e) => return Check::skip(NAME, e),
    };
    let rt = crate::rt::runtime();
    match rt.block_on(reach::probe(&ip, Duration::from_secs(3))) {
        Reach::Open => Check::pass(NAME, format!("SSH port of VM {vm} at {ip} answers")),
        Reach::Refused => Check::pass(
            NAME,
            format!("{ip} (VM {vm}) answers, but nothing listens on port 22"),
        ),
        Reach::NoRoute => Check::fail(
            NAME,
            format!(
                "VM {vm} has IP {ip}, but connecting to it fails with \"No route to host\": {}",
                reach::LOCAL_NETWORK_CAUSE
            ),
            reach::LOCAL_NETWORK_FIX,
        ),
        Reach::Other(e) => Check::warn(
            NAME,
            format!("cannot connect to {ip}:22 (VM {vm}): {e}"),
            "check the VM's network; `tart ip` and `ping` show whether it is up",
        ),
    }
}

pub fn check_softnet(settings: &Settings) -> Check {
    const NAME: &str = "softnet";
    if let Some(exposure) = crate::settings::isolation::exposure(settings) {
        let fix = "keep Softnet on (drop --no-softnet / `softnet: false`), and Tart's NAT network off its allow list (--softnet-allow), when jobs of different trust share this Mac";
        return Check::warn(NAME, exposure, fix);
    }
    if !settings.softnet {
        let found = resolve("softnet").map(|p| format!("; found at {}", p.display()));
        let found = found.unwrap_or_default();
        return Check::skip(NAME, format!("one VM at a time, no neighbour to isolate from (jobs may still ask for Softnet){found}"));
    }
    let Some(path) = resolve("softnet").filter(|p| is_executable(p)) else {
        return Check::fail(
            NAME,
            "--softnet is set but `softnet` is not on PATH: `tart run` fails with \"softnet not found in PATH\"",
            "install Softnet (`brew install cirruslabs/cli/softnet`) and make sure it is on gitlab-runner's PATH",
        );
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o4000 != 0 => Check::pass(
            NAME,
            format!("{}, setuid root", path.display()),
        ),
        Ok(_) => Check::warn(
            NAME,
            format!("{} is not setuid root: Tart would ask for sudo on a terminal a CI job does not have, so VMs fail to start", path.display()),
            format!("`sudo chown root {p} && sudo chmod u+s {p}`", p = path.display()),
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot inspect {}: {e}", path.display()),
            "check its owner and mode by hand (`ls -l`)",
        ),
    }
}
