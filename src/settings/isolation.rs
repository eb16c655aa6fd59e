//! Network isolation between the VMs of concurrent jobs.
//!
//! Under Tart's default NAT every guest shares one subnet with every other guest on the
//! host, so one job's guest could reach another job's VM (images often share their
//! password) or answer in its place. Softnet filters each guest's traffic: its own MAC and
//! leased IP only, nothing to other guests or the host's private networks. It is therefore
//! on by default whenever more than one VM can run (jobs at `--concurrency` and the warm
//! VMs booted beside them); the admin may turn it off, a job may only turn it on.

use std::net::Ipv4Addr;

use crate::settings::Settings;

/// Why jobs on this host are not isolated from each other, if they are not.
pub fn exposure(settings: &Settings) -> Option<String> {
    exposure_on(settings, crate::host::dhcp::host_nat_guest_range())
}

/// [`exposure`] with Tart's NAT network handing out the guest addresses `nat`.
pub fn exposure_on(settings: &Settings, nat: (Ipv4Addr, Ipv4Addr)) -> Option<String> {
    if let Some(interface) = &settings.bridged {
        return Some(format!("VMs are bridged onto {interface}: every job's guest shares that network with the others' (Softnet does not apply)"));
    }
    if let Some(cidr) = nat_overlap(&settings.softnet_allow, nat) {
        return Some(allowed_into_nat(cidr, nat));
    }
    let at_once = vms_at_once(settings);
    (at_once > 1 && !settings.softnet).then(|| {
        format!(
            "Softnet is off while {at_once} VMs can run at once (--concurrency {}, --warm-pool {}): one job's guest can reach another job's VM, or a warm VM a later job will get, over Tart's shared NAT network, and send as its IP and MAC address",
            settings.concurrency, settings.warm.pool
        )
    })
}

/// Softnet lets a guest reach the networks on its allow list, so a range that covers Tart's
/// NAT network (where the other VMs are; `0.0.0.0/0` included, which Tart's help says also
/// turns off "VMs bridge isolation") lifts the isolation between jobs: the first such range
/// of `cidrs` (each a valid IPv4 CIDR), given the guest addresses `nat`.
pub fn nat_overlap(cidrs: &[String], nat: (Ipv4Addr, Ipv4Addr)) -> Option<&str> {
    cidrs.iter().map(String::as_str).find(|cidr| {
        let Some((ip, bits)) = cidr.split_once('/') else {
            return false;
        };
        let (Ok(ip), Ok(bits)) = (ip.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
            return false;
        };
        let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
        let first = u32::from(ip) & mask;
        let last = first | !mask;
        first <= u32::from(nat.1) && u32::from(nat.0) <= last
    })
}

/// The warning for an allow range that covers Tart's NAT network.
pub fn allowed_into_nat(cidr: &str, nat: (Ipv4Addr, Ipv4Addr)) -> String {
    format!(
        "the Softnet allow list has `{cidr}`, which covers Tart's NAT network ({}-{}) where the other jobs' VMs are: Softnet lets each guest reach those VMs, so one job's guest can reach another job's VM",
        nat.0, nat.1
    )
}

/// How many VMs this runner may have running at once: the jobs' and the warm pool's.
pub fn vms_at_once(settings: &Settings) -> u32 {
    settings.concurrency.saturating_add(settings.warm.pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Options;

    fn settings(options: Options) -> Settings {
        Settings::load(&options).unwrap()
    }

    #[test]
    fn softnet_is_on_by_default_only_when_vms_run_side_by_side() {
        assert!(!settings(Options::default()).softnet);
        let two = Options {
            concurrency: Some(2),
            ..Default::default()
        };
        assert!(settings(two.clone()).softnet);
        assert!(exposure(&settings(two.clone())).is_none());
        let off = Options {
            no_softnet: true,
            ..two
        };
        assert!(!settings(off.clone()).softnet);
        assert!(exposure(&settings(off)).unwrap().contains("Softnet is off"));
    }

    /// A warm VM runs beside the job: one job at a time is still two VMs at once.
    #[test]
    fn softnet_is_on_by_default_when_a_warm_pool_runs_beside_a_single_job() {
        let warm = Options {
            warm: crate::settings::warm::WarmOptions {
                pool: Some(1),
                images: vec!["ghcr.io/org/img:1".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(settings(warm.clone()).softnet);
        assert!(exposure(&settings(warm.clone())).is_none());
        let off = Options {
            no_softnet: true,
            ..warm
        };
        assert!(!settings(off.clone()).softnet);
        let why = exposure(&settings(off)).expect("an exposure");
        assert!(why.contains("2 VMs can run at once"), "{why}");
    }

    #[test]
    fn the_admin_can_force_softnet_on_a_single_vm_host() {
        let on = Options {
            softnet: true,
            ..Default::default()
        };
        assert!(settings(on).softnet);
    }

    const NAT: (Ipv4Addr, Ipv4Addr) = (
        Ipv4Addr::new(192, 168, 64, 2),
        Ipv4Addr::new(192, 168, 64, 254),
    );

    #[test]
    fn an_allow_range_covering_the_nat_network_is_an_exposure() {
        for cidr in [
            "0.0.0.0/0",
            "192.168.0.0/16",
            "192.168.64.0/24",
            "192.168.64.7/32",
        ] {
            let allowing = Options {
                concurrency: Some(2),
                softnet_allow: vec!["10.0.0.0/8".into(), cidr.into()],
                ..Default::default()
            };
            let why = exposure_on(&settings(allowing), NAT).expect(cidr);
            assert!(why.contains(cidr) && why.contains("NAT network"), "{why}");
        }
    }

    #[test]
    fn an_allow_range_beside_the_nat_network_is_no_exposure() {
        let allowing = Options {
            concurrency: Some(2),
            softnet_allow: vec![
                "10.0.0.0/8".into(),
                "192.168.65.0/24".into(),
                "192.168.64.255/32".into(),
            ],
            ..Default::default()
        };
        assert_eq!(exposure_on(&settings(allowing), NAT), None);
    }
}
