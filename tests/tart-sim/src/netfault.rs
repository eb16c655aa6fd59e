//! Host-side network faults of a real Mac that only the host's firewall can reproduce here.
//!
//! Local Network privacy (macOS 15+): a process without the permission gets "No route to
//! host" (EHOSTUNREACH) on every connection to a VM, although the VM has an IP. Here an
//! iptables rule rejects TCP to the guest's loopback address with ICMP host-unreachable,
//! which the kernel turns into exactly that errno for the connecting process. `tart exec`
//! is unaffected (it enters the guest's namespaces, as Tart goes through a host socket).
//! The rule names the address only, and the next VM that takes the address removes a rule
//! a killed `tart run` left behind.

use std::process::{Command, Stdio};

const COMMENT: &str = "tart-sim-local-network";

fn rule(ip: &str) -> Vec<String> {
    [
        "OUTPUT",
        "-d",
        &format!("{ip}/32"),
        "-p",
        "tcp",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-unreachable",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn iptables(op: &str, ip: &str) -> Result<bool, String> {
    let status = Command::new("iptables")
        .args(["-w", op])
        .args(rule(ip))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("the local_network_denied fault needs iptables: {e}"))?;
    Ok(status.success())
}

/// Blocks connections from the host to `ip`.
pub fn deny(ip: &str) -> Result<(), String> {
    for _ in 0..20 {
        if iptables("-I", ip)? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!("iptables could not add the rule blocking {ip}"))
}

/// Lifts any block on `ip`: a concurrent iptables call can make one attempt fail, so it
/// checks until the rule is gone. Quiet and quick where iptables is missing.
pub fn allow(ip: &str) {
    for _ in 0..40 {
        match iptables("-C", ip) {
            Ok(true) => {
                let _ = iptables("-D", ip);
            }
            _ => return,
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
