//! Network isolation between the VMs of concurrent jobs.
//!
//! Under Tart's default NAT every guest shares one subnet with every other guest on the
//! host, so one job's guest could reach another job's VM (images often share their
//! password) or answer in its place. Softnet filters each guest's traffic: its own MAC and
//! leased IP only, nothing to other guests or the host's private networks. It is therefore
//! on by default whenever more than one VM can run; the admin may turn it off, a job may
//! only turn it on.

use crate::settings::Settings;

/// Why jobs on this host are not isolated from each other, if they are not.
pub fn exposure(settings: &Settings) -> Option<String> {
    if let Some(interface) = &settings.bridged {
        return Some(format!("VMs are bridged onto {interface}: every job's guest shares that network with the others' (Softnet does not apply)"));
    }
    (settings.concurrency > 1 && !settings.softnet).then(|| {
        format!("Softnet is off with --concurrency {}: one job's guest can reach another job's VM over Tart's shared NAT network", settings.concurrency)
    })
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

    #[test]
    fn the_admin_can_force_softnet_on_a_single_vm_host() {
        let on = Options {
            softnet: true,
            ..Default::default()
        };
        assert!(settings(on).softnet);
    }
}
