//! How many of this runner's VMs the fleet can hold, by the rules Orchard's scheduler places
//! them with (spec/orchard.md §2.1, §2.2): a worker takes a VM only when it is online, not
//! paused, of the VM's arch and runtime (a macOS VM: `arm64`, `tart`), has every label the VM
//! asks for, and has each resource the VM asks for left over after the VMs scheduled on it
//! (a `failed` VM is de-scheduled and frees its resources).

use std::collections::BTreeMap;
use std::time::Duration;

use super::settings::Placement;
use super::types::{Vm, VmStatus, Worker};

/// Orchard's default `--worker-offline-timeout`.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(180);

/// The fleet as this runner's VMs see it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Room {
    /// Workers online and not paused.
    pub usable: usize,
    /// Of those, the ones of the right kind with the runner's labels.
    pub matching: usize,
    /// How many of the runner's VMs the matching workers hold when empty.
    pub slots: u64,
    /// How many more fit now.
    pub free: u64,
    /// A resource the runner asks for that no matching worker offers enough of.
    pub lacking: Option<String>,
}

pub fn room(workers: &[Worker], vms: &[Vm], placement: &Placement, now: i64) -> Room {
    let mut room = Room::default();
    let offline_after = OFFLINE_AFTER.as_secs() as i64;
    for w in workers {
        let online = w.last_seen.is_some_and(|t| now - t.0 <= offline_after);
        if !online || w.scheduling_paused {
            continue;
        }
        room.usable += 1;
        // Orchard's scheduler takes a VM only to a worker whose arch equals the VM's: a
        // worker that reports none takes nothing. Controllers before 0.53 (no runtimes but
        // Tart) report no runtime.
        let kind = w.arch == "arm64" && ["", "tart"].contains(&w.runtime.as_str());
        let labelled = placement
            .labels
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v));
        if !kind || !labelled {
            continue;
        }
        room.matching += 1;
        let mut used: BTreeMap<&str, u64> = BTreeMap::new();
        for vm in vms
            .iter()
            .filter(|vm| vm.worker == w.name && vm.status != VmStatus::Failed)
        {
            for (k, n) in &vm.resources {
                *used.entry(k).or_default() += n;
            }
        }
        let (mut slots, mut free) = (u64::MAX, u64::MAX);
        for (k, need) in placement.resources.iter().filter(|(_, n)| **n > 0) {
            let have = w.resources.get(k).copied().unwrap_or(0);
            if have < *need && room.lacking.is_none() {
                room.lacking = Some(k.clone());
            }
            let left = have.saturating_sub(used.get(k.as_str()).copied().unwrap_or(0));
            slots = slots.min(have / need);
            free = free.min(left / need);
        }
        // A runner that asks for nothing: Orchard still takes one macOS slot per VM.
        if slots == u64::MAX {
            (slots, free) = (0, 0);
        }
        room.slots += slots;
        room.free += free;
    }
    if room.slots > 0 {
        room.lacking = None;
    }
    room
}

#[cfg(test)]
mod tests {
    use super::super::types::Timestamp;
    use super::*;

    const NOW: i64 = 1_000_000;

    fn worker(name: &str, labels: &[(&str, &str)], resources: &[(&str, u64)]) -> Worker {
        Worker {
            name: name.into(),
            last_seen: Some(Timestamp(NOW - 5)),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: resources.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            arch: "arm64".into(),
            runtime: "tart".into(),
            ..Worker::default()
        }
    }

    fn placement(labels: &[(&str, &str)], resources: &[(&str, u64)]) -> Placement {
        Placement {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: resources.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..Placement::default()
        }
    }

    fn vm(worker: &str, status: VmStatus, resources: &[(&str, u64)]) -> Vm {
        Vm {
            worker: worker.into(),
            status,
            resources: resources.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..Vm::default()
        }
    }

    #[test]
    fn only_workers_with_every_label_count() {
        let workers = [
            worker("ios-1", &[("pool", "ios")], &[("tart-vms", 2)]),
            worker("android-1", &[("pool", "android")], &[("tart-vms", 2)]),
            worker("bare", &[], &[("tart-vms", 2)]),
        ];
        let r = room(
            &workers,
            &[],
            &placement(&[("pool", "ios")], &[("tart-vms", 1)]),
            NOW,
        );
        assert_eq!((r.usable, r.matching, r.slots, r.free), (3, 1, 2, 2));
    }

    #[test]
    fn slots_are_counted_in_the_runners_own_resource_sizes_minus_what_runs() {
        let workers = [worker("m", &[], &[("tart-vms", 2), ("memory-mib", 32768)])];
        let vms = [
            vm(
                "m",
                VmStatus::Running,
                &[("tart-vms", 1), ("memory-mib", 8192)],
            ),
            vm(
                "m",
                VmStatus::Failed,
                &[("tart-vms", 1), ("memory-mib", 24576)],
            ),
        ];
        let whole_mac = placement(&[], &[("tart-vms", 2)]);
        let r = room(&workers, &vms, &whole_mac, NOW);
        assert_eq!((r.slots, r.free), (1, 0));
        let big = placement(&[], &[("tart-vms", 1), ("memory-mib", 16384)]);
        let r = room(&workers, &vms, &big, NOW);
        assert_eq!((r.slots, r.free), (2, 1), "a failed VM frees its resources");
    }

    #[test]
    fn a_resource_no_matching_worker_offers_is_named() {
        let workers = [worker("m", &[], &[("tart-vms", 2)])];
        let r = room(&workers, &[], &placement(&[], &[("gpu", 1)]), NOW);
        assert_eq!((r.slots, r.lacking.as_deref()), (0, Some("gpu")));
    }

    #[test]
    fn offline_paused_and_linux_workers_hold_nothing() {
        let mut offline = worker("old", &[], &[("tart-vms", 2)]);
        offline.last_seen = Some(Timestamp(NOW - 600));
        let mut paused = worker("paused", &[], &[("tart-vms", 2)]);
        paused.scheduling_paused = true;
        let mut linux = worker("vetu", &[], &[("tart-vms", 2)]);
        linux.runtime = "vetu".into();
        let r = room(
            &[offline, paused, linux],
            &[],
            &placement(&[], &[("tart-vms", 1)]),
            NOW,
        );
        assert_eq!((r.usable, r.matching, r.slots), (1, 0, 0));
    }

    #[test]
    fn a_worker_of_another_arch_or_none_holds_nothing() {
        let mut intel = worker("intel", &[], &[("tart-vms", 2)]);
        intel.arch = "amd64".into();
        let mut unknown = worker("unknown", &[], &[("tart-vms", 2)]);
        unknown.arch = String::new();
        let r = room(
            &[intel, unknown],
            &[],
            &placement(&[], &[("tart-vms", 1)]),
            NOW,
        );
        assert_eq!((r.usable, r.matching, r.slots), (2, 0, 0));
    }
}
