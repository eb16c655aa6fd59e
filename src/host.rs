//! Host resources: the VM slots shared by every runner on this Mac, and the CPU and memory
//! a VM gets when the admin asks for automatic sizing.
//!
//! A slot is an flock on a file under `<state dir>/slots/`. Prepare takes the slots, and
//! the supervisor and `tart run` inherit the locked descriptors, so a slot is held exactly
//! as long as the VM's processes live and the kernel frees it when they die, whatever kills
//! them. A macOS guest needs one general slot and one of Apple's two macOS slots.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::settings::{Resource, Settings};
use crate::state_dir::{Dir, StateDir, SLOTS};
use crate::vm::try_lock;

/// Held slot locks. Dropping this in prepare does not free them once the supervisor has
/// inherited the descriptors.
pub struct Slots {
    pub files: Vec<File>,
}

impl Slots {
    pub fn raw_fds(&self) -> Vec<i32> {
        self.files.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// Waits until this host has a free VM slot (and a macOS slot for a macOS guest), telling
/// the job log why it waits.
pub async fn acquire(
    settings: &Settings,
    root: &StateDir,
    macos: bool,
    deadline: Instant,
) -> Result<Slots> {
    let dir = root.subdir(SLOTS)?;
    let general: Vec<_> = (0..settings.concurrency)
        .map(|i| format!("vm-{i}"))
        .collect();
    let apple: Vec<_> = (0..settings.macos_vm_limit)
        .map(|i| format!("macos-{i}"))
        .collect();
    let started = Instant::now();
    let mut last_notice: Option<Instant> = None;
    loop {
        if let Some(vm_slot) = take_any(&dir, &general)? {
            if !macos {
                return Ok(Slots {
                    files: vec![vm_slot],
                });
            }
            if let Some(mac_slot) = take_any(&dir, &apple)? {
                return Ok(Slots {
                    files: vec![vm_slot, mac_slot],
                });
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no free VM slot after {}s: this host runs at most {} VMs ({} macOS); raise the job timeout or --concurrency, or check `gitlab-runner-tart-driver gc --dry-run` for leftovers",
                started.elapsed().as_secs(),
                settings.concurrency,
                settings.macos_vm_limit
            );
        }
        if last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            let what = if macos { "macOS VM" } else { "VM" };
            eprintln!(
                "Waiting for a free {what} slot: this host runs at most {} VMs, {} of them macOS, and all are busy...",
                settings.concurrency, settings.macos_vm_limit
            );
            last_notice = Some(Instant::now());
        }
        // An await, not a blocking sleep: a cancel must reach prepare while it waits.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn take_any(dir: &Dir, names: &[String]) -> Result<Option<File>> {
    for name in names {
        if let Some(file) = try_lock(dir, name)? {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Memory left to the host itself when VMs are sized automatically.
const HOST_RESERVE_MIB: u64 = 2048;

/// The smallest CPU count and memory (MiB) a VM accepts: macOS images carry a minimum,
/// and `tart set` refuses anything below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minimum {
    pub cpu: u64,
    pub memory_mib: u64,
}

/// What the VM should get: explicit values as given, automatic shares of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub cpu: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// An image that needs more than this runner gives a VM. The job chose the image, so this
/// is the job's to fix: a build failure, not a VM that takes the host from its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooBig(pub String);

/// The CPU count and memory (MiB) to give a VM, or None to keep the image's.
pub fn vm_resources(settings: &Settings, minimum: Minimum) -> Result<Sizing, TooBig> {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let host_mib = || {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        sys.total_memory() / 1024 / 1024
    };
    size(settings, minimum, host_cpus, host_mib)
}

fn size(
    settings: &Settings,
    minimum: Minimum,
    host_cpus: u64,
    host_mib: impl Fn() -> u64,
) -> Result<Sizing, TooBig> {
    let share = |total: u64| (total / u64::from(settings.concurrency)).max(1);
    // The image's minimum raises nothing: a job picks the image, and a minimum of the whole
    // host would starve the other VMs this host runs.
    let pick = |explicit: Option<Resource>,
                what: &str,
                unit: &str,
                min: u64,
                auto: &dyn Fn() -> u64| {
        let (value, source) = match explicit {
            Some(Resource::Fixed(n)) => (n, "the runner's setting"),
            Some(Resource::Auto) => (auto(), "this host's share per VM"),
            None if settings.auto_resources => (auto(), "this host's share per VM"),
            None => return Ok(None),
        };
        if min > value {
            return Err(TooBig(format!(
                "the image needs at least {min}{unit} {what}, more than the {value}{unit} each VM gets here ({source}, with --concurrency {}): use a smaller image, or ask the admin to give VMs more",
                settings.concurrency
            )));
        }
        Ok(Some(value))
    };
    let cpu = pick(settings.cpu, "CPUs", "", minimum.cpu, &|| share(host_cpus))?;
    let memory_mib = pick(
        settings.memory,
        "of memory",
        " MiB",
        minimum.memory_mib,
        &|| share(host_mib().saturating_sub(HOST_RESERVE_MIB).max(1024)),
    )?;
    Ok(Sizing { cpu, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Options;

    fn settings(concurrency: u32) -> Settings {
        Settings::load(&Options {
            concurrency: Some(concurrency),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn auto_resources_split_the_host_evenly_and_keep_a_reserve() {
        let s = size(&settings(2), Minimum::default(), 12, || 32 * 1024).unwrap();
        assert_eq!(
            s,
            Sizing {
                cpu: Some(6),
                memory_mib: Some(15 * 1024)
            }
        );
    }

    #[test]
    fn an_image_minimum_above_the_per_vm_share_is_refused_not_granted() {
        let err = size(
            &settings(2),
            Minimum {
                cpu: 4,
                memory_mib: 8192,
            },
            4,
            || 24 * 1024,
        )
        .unwrap_err();
        assert!(
            err.0.contains("at least 4 CPUs") && err.0.contains("2 each VM gets"),
            "{}",
            err.0
        );
        let err = size(
            &settings(2),
            Minimum {
                cpu: 1,
                memory_mib: 16 * 1024,
            },
            4,
            || 24 * 1024,
        )
        .unwrap_err();
        assert!(err.0.contains("16384 MiB of memory"), "{}", err.0);
    }

    #[test]
    fn an_image_minimum_within_the_share_is_fine() {
        let s = size(
            &settings(2),
            Minimum {
                cpu: 2,
                memory_mib: 4096,
            },
            4,
            || 24 * 1024,
        )
        .unwrap();
        assert_eq!(s.cpu, Some(2));
        assert_eq!(s.memory_mib, Some(11 * 1024));
    }

    #[test]
    fn explicit_values_win_over_auto_but_not_over_the_image_minimum() {
        let mut st = settings(2);
        st.cpu = Some(Resource::Fixed(3));
        st.auto_resources = true;
        assert_eq!(
            size(&st, Minimum::default(), 16, || 1024).unwrap().cpu,
            Some(3)
        );
        let min = Minimum {
            cpu: 4,
            memory_mib: 0,
        };
        let err = size(&st, min, 16, || 1024).unwrap_err();
        assert!(err.0.contains("the runner's setting"), "{}", err.0);
    }

    #[test]
    fn without_auto_the_image_keeps_its_resources() {
        let mut st = settings(1);
        st.auto_resources = false;
        assert_eq!(
            size(&st, Minimum::default(), 16, || 1024).unwrap(),
            Sizing {
                cpu: None,
                memory_mib: None
            }
        );
    }
}
