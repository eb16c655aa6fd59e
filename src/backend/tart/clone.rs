//! A clone made ready to start: its size and MAC address set (`tart set`) and `tart run`'s
//! arguments. Prepare (`create.rs`) and the warm pool (`fill.rs`) both start their VMs so.

use anyhow::anyhow;

use crate::failure::Failure;
use crate::guest::identity::Identity;
use crate::guest::Share;
use crate::host;
use crate::host::dhcp;
use crate::host::state_dir::StateDir;
use crate::host::tart::Tart;
use crate::host::tart_home::{self, VmConfig};
use crate::job::request::Request;
use crate::settings::Settings;

/// `tart run`'s arguments for a cloned VM whose guest is `os`: the request's own (graphics or
/// VNC, network, nested virtualization, root disk options), then one `--dir` per host share
/// and one for the identity proof. Prepare and the warm pool start their VMs with these.
pub fn run_args(
    settings: &Settings,
    request: &Request,
    os: &str,
    shares: &[Share],
    identity: &Identity,
) -> Vec<String> {
    let mut args = request.run_args(settings, os);
    for share in shares {
        args.push("--dir".into());
        args.push(share.dir_arg(os));
    }
    args.push("--dir".into());
    args.push(identity.dir_arg());
    args
}

/// Remembers the DHCP lease a booted VM of this runner took (a job's or a warm one): the
/// next clone with its MAC may reuse it, instead of taking a new MAC and another of the
/// host's leases, and its job log does not blame another user for it.
pub fn remember_lease(root: &StateDir, vm: &str) {
    if let Some(mac) = tart_home::vm_config(vm).and_then(|c| c.mac) {
        if let Err(e) = dhcp::OwnLeases::open(root).and_then(|o| o.remember(&mac)) {
            eprintln!("WARNING: cannot remember the DHCP lease of VM {vm}: {e:#}");
        }
    }
}

/// Applies CPU, memory, display and a new MAC address in one `tart set`, and only when
/// something changes: the clone's `config.json` tells what it has (`tart get` only when that
/// cannot be read).
pub async fn configure(
    tart: &Tart,
    settings: &Settings,
    root: &StateDir,
    request: &Request,
    vm: &str,
) -> Result<VmConfig, Failure> {
    let mut config = match tart_home::vm_config(vm) {
        Some(config) => config,
        None => {
            let info = tart.get(vm).await?;
            VmConfig {
                os: info.os,
                cpu: info.cpu,
                memory_mib: info.memory,
                minimum: tart_home::Minimum::default(),
                mac: None,
            }
        }
    };
    let own = host::Own {
        cpu: config.cpu,
        memory_mib: config.memory_mib,
    };
    let sizing = host::vm_resources_for(
        &settings.host_limits(),
        config.minimum,
        own,
        config.os != "linux",
    )
    .map_err(|too_small| match too_small {
        host::TooSmall::Image(why) => {
            Failure::rejected(format!("image `{}`: {why}", request.image.name))
        }
        host::TooSmall::Settings(why) => {
            Failure::System(anyhow!("image `{}`: {why}", request.image.name))
        }
    })?;
    let mut flags = Vec::new();
    if let Some(cpu) = sizing.cpu.filter(|&cpu| cpu != config.cpu) {
        flags.extend(["--cpu".to_string(), cpu.to_string()]);
        config.cpu = cpu;
    }
    if let Some(memory) = sizing.memory_mib.filter(|&m| m != config.memory_mib) {
        flags.extend(["--memory".to_string(), memory.to_string()]);
        config.memory_mib = memory;
    }
    if let Some(display) = &request.display {
        flags.extend(["--display".to_string(), display.0.clone()]);
    }
    if request.random_mac || lease_taken(root, config.mac.as_deref()) {
        flags.push("--random-mac".to_string());
    }
    if !flags.is_empty() {
        tart.set(vm, &flags).await?;
    }
    Ok(config)
}

/// Whether the clone's MAC address has a DHCP lease this runner did not take (another
/// user's VM cloned from the same image, or a stale one): then it needs a MAC of its own.
fn lease_taken(root: &StateDir, mac: Option<&str>) -> bool {
    let Some(mac) = mac else { return false };
    let own = dhcp::OwnLeases::open(root)
        .map(|o| o.list())
        .unwrap_or_default();
    let leases = dhcp::active_leases();
    let Some(lease) = dhcp::unsafe_lease(&leases, mac, &own) else {
        return false;
    };
    eprintln!(
        "The clone's MAC address {mac} already has a DHCP lease ({}) that no VM of this runner took (another user's clone of the image, or a stale one): giving the clone a new MAC address, so that the address it boots with is its own",
        lease.ip
    );
    true
}
