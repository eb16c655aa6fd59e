//! Doctor's check of the other VMs on this Mac's shared NAT network: another runner's,
//! another user's or another TART_HOME's VMs started without Softnet.
//!
//! Softnet filters what its own guest sends (its own MAC and leased IP only, to no other
//! guest). It does nothing about a guest that runs without it: such a guest shares Tart's
//! NAT network (192.168.64.0/24) with this runner's VMs and can answer for their IP and MAC
//! addresses. This runner's Softnet keeps its own guests from doing that; the nonce proof
//! after login (`guest::identity`) keeps the driver from sending a job to a VM that is not
//! the job's, but a password login still reaches the impostor first. So an admin must
//! know when such a neighbour runs. Doctor sees `tart run` command lines in `ps` (every
//! user's; macOS may hide another user's arguments, which is said too).

use std::net::Ipv4Addr;
use std::path::Path;

use super::probe::{resolve, run_bounded, COMMAND_LIMIT};
use super::report::Check;
use crate::settings::Settings;

const NAME: &str = "other VMs' isolation";

/// The `tart run` flags that take a VM off the shared NAT network, or filter it there.
/// (`--net-softnet-control-fd`, Tart 2.34+, turns Softnet on by itself: Run.swift treats it
/// like `--net-softnet-allow`.)
const ISOLATING: [&str; 7] = [
    "--net-softnet",
    "--net-softnet-allow",
    "--net-softnet-block",
    "--net-softnet-expose",
    "--net-softnet-control-fd",
    "--net-bridged",
    "--net-host",
];

/// A `tart run` seen in `ps` that may share the NAT network unfiltered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Neighbour {
    /// Its arguments show no Softnet (nor another network).
    Unfiltered {
        vm: String,
        user: String,
        pid: String,
    },
    /// macOS showed only `(tart)`: its network cannot be told.
    Hidden { user: String, pid: String },
}

/// The neighbours in `ps -axww -o user=,pid=,args=` output, except this runner's own VMs:
/// those named in `ours` (this state directory's records: the `softnet` check covers them)
/// and run by `own_user` (`ps`'s name for the runner's user). Another user's `tart run` of
/// the same name is another Tart home's VM, and a neighbour.
/// `nat` is the guest range of Tart's NAT network: a VM whose Softnet allow list covers it
/// reaches the other VMs there as if it had no Softnet.
pub fn neighbours(
    ps: &str,
    ours: &[String],
    own_user: &str,
    nat: (Ipv4Addr, Ipv4Addr),
) -> Vec<Neighbour> {
    let mut found = Vec::new();
    for line in ps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(user), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let args: Vec<&str> = fields.collect();
        let (user, pid) = (user.to_string(), pid.to_string());
        let Some(at) = args
            .windows(2)
            .position(|w| w[0].rsplit('/').next() == Some("tart") && w[1] == "run")
        else {
            if args.first() == Some(&"(tart)") {
                found.push(Neighbour::Hidden { user, pid });
            }
            continue;
        };
        let rest = &args[at + 2..];
        let Some(vm) = rest.iter().find(|a| !a.starts_with('-')) else {
            continue;
        };
        let isolated = rest.iter().any(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            ISOLATING.contains(&flag)
        }) && !allows_into_nat(rest, nat);
        let own = user == own_user && ours.iter().any(|o| o == vm);
        if !isolated && !own {
            found.push(Neighbour::Unfiltered {
                vm: vm.to_string(),
                user,
                pid,
            });
        }
    }
    found
}

pub fn check_neighbours(settings: &Settings) -> Check {
    let Some(ps) = resolve("ps") else {
        return Check::skip(NAME, "`ps` not found: cannot see the other VMs on this Mac");
    };
    let out = match run_bounded(&ps, &["-axww", "-o", "user=,pid=,args="], COMMAND_LIMIT) {
        Ok(out) if out.ok() => out.stdout,
        outcome => {
            return Check::warn(
                NAME,
                format!(
                    "cannot list processes: {}",
                    outcome.map_or_else(|e| e, |out| out.message())
                ),
                "run `ps -axww -o user=,pid=,args=` as the runner user",
            )
        }
    };
    let nat = crate::host::dhcp::host_nat_guest_range();
    let pid = std::process::id().to_string();
    let own_user = run_bounded(&ps, &["-o", "user=", "-p", &pid], COMMAND_LIMIT)
        .ok()
        .filter(|out| out.ok())
        .map(|out| out.stdout.trim().to_string())
        .unwrap_or_default();
    let found = neighbours(&out, &own_vms(&settings.state_dir), &own_user, nat);
    if found.is_empty() {
        return Check::pass(
            NAME,
            "every other `tart run` in sight isolates its VM (Softnet, bridged or host-only)",
        );
    }
    let named: Vec<String> = found
        .iter()
        .map(|n| match n {
            Neighbour::Unfiltered { vm, user, pid } => {
                format!("`tart run {vm}` without Softnet, or with a Softnet allow list covering the NAT network (user {user}, pid {pid})")
            }
            Neighbour::Hidden { user, pid } => {
                format!("a `tart` of user {user} whose arguments macOS hides (pid {pid}): its network cannot be told")
            }
        })
        .collect();
    Check::warn(
        NAME,
        format!(
            "VMs on Tart's shared NAT network that Softnet does not filter: {}. Such a guest can reach other guests and send as another VM's IP and MAC address, so it can answer in place of this runner's VMs: the driver's identity proof then refuses to send the job, but a password login has already reached it",
            named.join(", ")
        ),
        "have every runner and user on this Mac run its VMs with Softnet (`tart run --net-softnet`; for this driver, drop --no-softnet), or give this runner a Mac of its own; log in with a key (--ssh-key-file) so that an impostor receives no password",
    )
}

/// Whether `tart run`'s arguments `args` allow its guest into the NAT network `nat`
/// (`--net-softnet-allow=CIDRs` or `--net-softnet-allow CIDRs`).
fn allows_into_nat(args: &[&str], nat: (Ipv4Addr, Ipv4Addr)) -> bool {
    const ALLOW: &str = "--net-softnet-allow";
    let lists = args
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a.split_once('=') {
            Some((ALLOW, list)) => Some(list),
            _ if *a == ALLOW => args.get(i + 1).copied(),
            _ => None,
        });
    lists.into_iter().any(|list| {
        let cidrs: Vec<String> = list.split(',').map(|c| c.trim().to_string()).collect();
        crate::settings::isolation::nat_overlap(&cidrs, nat).is_some()
    })
}

/// The VM names this state directory has records of.
fn own_vms(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join(crate::host::state_dir::VMS))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: (Ipv4Addr, Ipv4Addr) = (
        Ipv4Addr::new(192, 168, 64, 2),
        Ipv4Addr::new(192, 168, 64, 254),
    );

    const PS: &str = "\
ci         101 /opt/homebrew/bin/tart run tartdrv-abc-1 --no-graphics --net-softnet
ci         102 tart run tartdrv-abc-2 --no-graphics
dev        103 /usr/local/bin/tart run --no-graphics devbox
other      104 tart run --net-bridged=en0 bridged-vm
other      105 tart run --net-softnet-allow=10.0.0.0/8 allowed
root       106 (tart)
ci         108 tart run tartdrv-ours-9 --no-graphics
";

    #[test]
    fn a_vm_without_softnet_is_a_neighbour_and_an_isolated_one_is_not() {
        let found = neighbours(PS, &["tartdrv-ours-9".to_string()], "ci", NAT);
        assert_eq!(
            found,
            [
                Neighbour::Unfiltered {
                    vm: "tartdrv-abc-2".into(),
                    user: "ci".into(),
                    pid: "102".into()
                },
                Neighbour::Unfiltered {
                    vm: "devbox".into(),
                    user: "dev".into(),
                    pid: "103".into()
                },
                Neighbour::Hidden {
                    user: "root".into(),
                    pid: "106".into()
                },
            ]
        );
    }

    #[test]
    fn a_mac_where_every_vm_uses_softnet_has_no_neighbour() {
        let ps = "ci 1 tart run a --net-softnet\nci 2 tart run b --no-graphics --net-softnet\n";
        assert!(neighbours(ps, &[], "ci", NAT).is_empty());
    }

    #[test]
    fn a_vm_whose_softnet_allows_the_nat_network_is_a_neighbour() {
        let ps = "ci 1 tart run a --net-softnet-allow=0.0.0.0/0\nci 2 tart run b --net-softnet-allow 10.0.0.0/8,192.168.64.0/24\nci 3 tart run c --net-softnet-allow=10.0.0.0/8\n";
        let vms: Vec<String> = neighbours(ps, &[], "ci", NAT)
            .into_iter()
            .map(|n| match n {
                Neighbour::Unfiltered { vm, .. } => vm,
                hidden => panic!("{hidden:?}"),
            })
            .collect();
        assert_eq!(vms, ["a", "b"]);
    }

    #[test]
    fn another_users_vm_named_like_ours_is_a_neighbour() {
        let ps = "dev 7 tart run tartdrv-ours-9 --no-graphics\nci 8 tart run tartdrv-ours-9 --no-graphics\n";
        let found = neighbours(ps, &["tartdrv-ours-9".to_string()], "ci", NAT);
        assert_eq!(
            found,
            [Neighbour::Unfiltered {
                vm: "tartdrv-ours-9".into(),
                user: "dev".into(),
                pid: "7".into()
            }]
        );
    }

    #[test]
    fn a_softnet_control_fd_flag_is_softnet() {
        let ps = "dev 7 tart run devbox --net-softnet-control-fd=3\n";
        assert!(neighbours(ps, &[], "ci", NAT).is_empty());
    }
}
