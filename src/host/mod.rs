//! The host side: this Mac's Tart (client, home, messages), each VM's state directory and
//! record (`vm`, `state_dir`), the supervisor around `tart run`, the registry policy Tart's
//! pulls run under (`registry_policy`), ownership markers, VMs this driver did not start
//! (`foreign`), the DHCP pool, where the Mac's system files are (`host_root`) and, in this
//! file, the slots and sizing of VMs. May use: the shared kinds and small utilities (`model`,
//! `failure`, `clock`, `logging`); nothing above it, not even settings, which hand it
//! [`Limits`] and other plain values.
//!
//! Host resources: the VM slots shared by every runner on this Mac, and the CPU and memory
//! a VM gets when the admin asks for automatic sizing.
//!
//! A slot is an flock on a file under `<state dir>/slots/`. Prepare takes the slots, and
//! the supervisor and `tart run` inherit the locked descriptors, so a slot is held exactly
//! as long as the VM's processes live and the kernel frees it when they die, whatever kills
//! them. A macOS guest needs one general slot and one of Apple's two macOS slots.

pub mod boot;
pub mod dhcp;
pub mod foreign;
pub mod host_root;
#[cfg(test)]
mod hostile_tests;
pub mod ownership;
pub mod registry_policy;
pub mod state_dir;
pub mod supervisor;
pub mod tart;
pub mod tart_home;
pub mod tart_message;
pub mod tool_path;
pub mod vm;

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::host::state_dir::{Dir, StateDir, SLOTS};
use crate::host::tart_home::Minimum;
use crate::host::vm::try_lock;
use crate::model::Resource;

/// What the admin lets this runner use of the host: how many VMs run at once and how each
/// is sized. Settings builds it (`Settings::host_limits`); host code never reads `Settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--concurrency`: the jobs' VMs at once.
    pub concurrency: u32,
    /// `--macos-vm-limit`: macOS VMs at once (Apple allows at most 2).
    pub macos_vm_limit: u32,
    /// `--warm-pool`: warm VMs that run beside the jobs'.
    pub warm_pool: u32,
    /// `--cpu`: each VM's CPUs, fixed or an automatic share.
    pub cpu: Option<Resource>,
    /// `--memory`: each VM's memory, fixed or an automatic share.
    pub memory: Option<Resource>,
    /// `--auto-resources`: automatic shares where `--cpu` or `--memory` is not given.
    pub auto_resources: bool,
}

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
    limits: &Limits,
    root: &StateDir,
    macos: bool,
    deadline: Instant,
) -> Result<Slots> {
    let dir = root.subdir(SLOTS)?;
    let mut wait = SlotWait::new(macos, deadline);
    loop {
        if let Some(slots) = try_acquire(limits, &dir, macos)? {
            return Ok(slots);
        }
        wait.next(limits).await?;
    }
}

/// A job's wait for its slots: the job log hears why every 30 s, and the wait ends in an
/// error at the deadline.
pub struct SlotWait {
    macos: bool,
    deadline: Instant,
    started: Instant,
    last_notice: Option<Instant>,
}

impl SlotWait {
    pub fn new(macos: bool, deadline: Instant) -> SlotWait {
        SlotWait {
            macos,
            deadline,
            started: Instant::now(),
            last_notice: None,
        }
    }

    /// Fails past the deadline; otherwise tells the job log (now and then) and pauses.
    pub async fn next(&mut self, limits: &Limits) -> Result<()> {
        if Instant::now() >= self.deadline {
            bail!(
                "no free VM slot after {}s: this host runs at most {} VMs ({} macOS); raise the job timeout or --concurrency, or check `gitlab-runner-tart-driver gc --dry-run` for leftovers",
                self.started.elapsed().as_secs(),
                limits.concurrency,
                limits.macos_vm_limit
            );
        }
        if self
            .last_notice
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            let what = if self.macos { "macOS VM" } else { "VM" };
            eprintln!(
                "Waiting for a free {what} slot: this host runs at most {} VMs, {} of them macOS, and all are busy...",
                limits.concurrency, limits.macos_vm_limit
            );
            self.last_notice = Some(Instant::now());
        }
        // An await, not a blocking sleep: a cancel must reach prepare while it waits.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

/// A job's slots if they are free right now: a general slot, and a macOS slot for a macOS
/// guest (never one without the other).
pub fn try_acquire(limits: &Limits, dir: &Dir, macos: bool) -> Result<Option<Slots>> {
    let Some(vm_slot) = take_any(dir, &slot_names("vm", limits.concurrency))? else {
        return Ok(None);
    };
    if !macos {
        return Ok(Some(Slots {
            files: vec![vm_slot],
        }));
    }
    let apple = slot_names(MACOS_SLOT, limits.macos_vm_limit);
    Ok(take_any(dir, &apple)?.map(|mac_slot| Slots {
        files: vec![vm_slot, mac_slot],
    }))
}

/// The prefix of Apple's macOS slots (`macos-0`, `macos-1`), which warm VMs use too.
pub const MACOS_SLOT: &str = "macos";

/// `<prefix>-0` .. `<prefix>-<n-1>`: the files of one kind of slot.
pub fn slot_names(prefix: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The first free slot of `names`, locked.
pub fn take_any(dir: &Dir, names: &[String]) -> Result<Option<File>> {
    Ok(take_named(dir, names)?.map(|(_, file)| file))
}

/// The first free slot of `names`, locked, with its name.
pub fn take_named(dir: &Dir, names: &[String]) -> Result<Option<(String, File)>> {
    for name in names {
        if let Some(file) = try_lock(dir, name)? {
            return Ok(Some((name.clone(), file)));
        }
    }
    Ok(None)
}

/// Memory left to the host itself when VMs are sized automatically.
const HOST_RESERVE_MIB: u64 = 2048;

/// What the VM should get: explicit values as given, automatic shares of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub cpu: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// Why an image's minimum cannot be met. Whose fix it is decides how the job fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooSmall {
    /// The image needs more than each VM gets here (the per-VM share, or the whole host):
    /// the job chose an image this runner cannot run, and retrying cannot help (a build
    /// failure, naming the minimum and the share; the admin's own fix is named too).
    Image(String),
    /// The admin's `--cpu`/`--memory` ask for more than this host can give any VM: the
    /// admin's to change (a system failure naming the setting).
    Settings(String),
}

/// What an image's VM has of its own (`cpuCount`, `memorySize`), which it keeps when
/// nothing sizes it (`--no-auto-resources` without `--cpu`/`--memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    pub cpu: u64,
    pub memory_mib: u64,
}

/// The CPU count and memory (MiB) to give a job's VM, or None to keep the image's own,
/// which must fit the host too: a job picks the image.
pub fn vm_resources_for(
    limits: &Limits,
    minimum: Minimum,
    own: Own,
    macos: bool,
) -> Result<Sizing, TooSmall> {
    measure_host(limits, minimum, Some(own), macos)
}

/// The CPU count and memory (MiB) to give a VM, or None to keep the image's.
pub fn vm_resources(limits: &Limits, minimum: Minimum, macos: bool) -> Result<Sizing, TooSmall> {
    measure_host(limits, minimum, None, macos)
}

fn measure_host(
    limits: &Limits,
    minimum: Minimum,
    own: Option<Own>,
    macos: bool,
) -> Result<Sizing, TooSmall> {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let host_mib = || {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        sys.total_memory() / 1024 / 1024
    };
    size(limits, minimum, own, macos, host_cpus, host_mib)
}

/// How many VMs of this kind can run at once, sharing the host: Apple's limit caps macOS
/// guests below `--concurrency`, so a macOS VM's share is that of one of at most
/// `--macos-vm-limit` (a third VM beside them is a Linux one, which asks for little).
fn vms_at_once(limits: &Limits, macos: bool) -> u64 {
    // Warm VMs run beside the jobs' and get the same share.
    let vms = limits.concurrency + limits.warm_pool;
    let n = if macos {
        vms.min(limits.macos_vm_limit)
    } else {
        vms
    };
    u64::from(n.max(1))
}

fn size(
    limits: &Limits,
    minimum: Minimum,
    own: Option<Own>,
    macos: bool,
    host_cpus: u64,
    host_mib: impl FnOnce() -> u64,
) -> Result<Sizing, TooSmall> {
    let at_once = vms_at_once(limits, macos);
    let share = |total: u64| (total / at_once).max(1);
    let vms = limits.concurrency.saturating_add(limits.warm_pool);
    let sharing = if macos && limits.macos_vm_limit < vms {
        format!("the {at_once} macOS VMs --macos-vm-limit runs at once")
    } else if limits.warm_pool > 0 {
        format!(
            "the {at_once} VMs that run at once: --concurrency {} plus --warm-pool {}",
            limits.concurrency, limits.warm_pool
        )
    } else {
        format!("the {at_once} VMs --concurrency runs at once")
    };
    // The image's minimum raises nothing: a job picks the image, and a minimum of the whole
    // host would starve the other VMs this host runs.
    // Nor does anything else exceed the host: Virtualization refuses a VM with more CPUs
    // or memory than the Mac has, with a message that names neither the image nor the flag.
    let pick = |explicit: Option<Resource>,
                what: &str,
                unit: &str,
                flag: &str,
                min: u64,
                own: Option<u64>,
                whole: u64,
                auto: &dyn Fn() -> u64| {
        let (value, fixed) = match explicit {
            Some(Resource::Fixed(n)) if n > whole => {
                return Err(TooSmall::Settings(format!(
                    "--{flag} {n} gives each VM more {what} than this host can give any VM ({whole}{unit}): the admin can lower --{flag} to {whole} or less, or use `auto`"
                )))
            }
            Some(Resource::Fixed(n)) => (n, true),
            Some(Resource::Auto) => (auto(), false),
            None if limits.auto_resources => (auto(), false),
            None => {
                return match own {
                    Some(own) if own > whole => Err(TooSmall::Image(format!(
                        "the image's VM has {own}{unit} {what}, more than this host can give any VM ({whole}{unit}), and this runner keeps an image's own size (--no-auto-resources): use a smaller image, or the admin can set --{flag}"
                    ))),
                    _ => Ok(None),
                }
            }
        };
        if min <= value {
            return Ok(Some(value));
        }
        let needs = format!("the image needs at least {min}{unit} {what}");
        if min > whole {
            return Err(TooSmall::Image(format!(
                "{needs}, more than this host can give any VM ({whole}{unit}): use a smaller image"
            )));
        }
        // The host could run it, but not at this runner's share: still the job's choice of
        // image, which a retry cannot fix.
        Err(TooSmall::Image(if fixed {
            format!(
                "{needs}, more than the {value}{unit} this runner gives each VM (--{flag} {value}): use an image with a smaller minimum, or the admin can raise --{flag} to {min} or more"
            )
        } else {
            format!(
                "{needs}, more than the {value}{unit} each VM gets here (this host's {whole}{unit} shared by {sharing}): use an image with a smaller minimum, or the admin can lower --concurrency, or set --{flag} {min}"
            )
        }))
    };
    let cpu = pick(
        limits.cpu,
        "CPUs",
        "",
        "cpu",
        minimum.cpu,
        own.map(|o| o.cpu),
        host_cpus,
        &|| share(host_cpus),
    )?;
    let usable_mib = host_mib().saturating_sub(HOST_RESERVE_MIB).max(1024);
    let memory_mib = pick(
        limits.memory,
        "of memory",
        " MiB",
        "memory",
        minimum.memory_mib,
        own.map(|o| o.memory_mib),
        usable_mib,
        &|| share(usable_mib),
    )?;
    Ok(Sizing { cpu, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Settings` gives by default (checked in `settings`'s tests), at `concurrency`.
    fn limits(concurrency: u32) -> Limits {
        Limits {
            concurrency,
            macos_vm_limit: 2,
            warm_pool: 0,
            cpu: None,
            memory: None,
            auto_resources: true,
        }
    }

    fn min(cpu: u64, memory_mib: u64) -> Minimum {
        Minimum { cpu, memory_mib }
    }

    #[test]
    fn auto_resources_split_the_host_evenly_and_keep_a_reserve() {
        let s = size(&limits(2), Minimum::default(), None, false, 12, || {
            32 * 1024
        })
        .unwrap();
        assert_eq!(
            s,
            Sizing {
                cpu: Some(6),
                memory_mib: Some(15 * 1024)
            }
        );
    }

    /// At most two macOS guests run at once, whatever --concurrency says: on a 12 GB Mac
    /// at concurrency 3 a Cirrus image (4096 MiB minimum) gets (12 − 2) GiB ÷ 2, not ÷ 3.
    #[test]
    fn a_macos_vm_shares_the_host_with_at_most_the_macos_limit_of_vms() {
        let s = size(&limits(3), min(2, 4096), None, true, 8, || 12 * 1024).unwrap();
        assert_eq!((s.cpu, s.memory_mib), (Some(4), Some(5 * 1024)));
        let s = size(&limits(3), Minimum::default(), None, false, 9, || 12 * 1024).unwrap();
        assert_eq!((s.cpu, s.memory_mib), (Some(3), Some(10 * 1024 / 3)));
    }

    /// The image fits this host, not the runner's per-VM share: the job's choice of image
    /// (a retry cannot help), with the share and the admin's setting named.
    #[test]
    fn a_minimum_above_the_share_is_the_images_fault_naming_the_share_and_the_setting() {
        let err = size(&limits(2), min(1, 8192), None, false, 8, || 16 * 1024).unwrap_err();
        let TooSmall::Image(why) = err else {
            panic!("{err:?}")
        };
        assert!(why.contains("8192 MiB of memory"), "{why}");
        assert!(why.contains("more than the 7168 MiB each VM gets"), "{why}");
        assert!(why.contains("lower --concurrency"), "{why}");
        assert!(why.contains("--memory 8192"), "{why}");
    }

    #[test]
    fn a_minimum_beyond_the_whole_host_is_the_images_fault() {
        let err = size(&limits(2), min(64, 0), None, false, 8, || 16 * 1024).unwrap_err();
        let TooSmall::Image(why) = err else {
            panic!("{err:?}")
        };
        assert!(why.contains("at least 64 CPUs"), "{why}");
        assert!(why.contains("use a smaller image"), "{why}");
    }

    #[test]
    fn an_image_minimum_within_the_share_is_fine() {
        let s = size(&limits(2), min(2, 4096), None, false, 4, || 24 * 1024).unwrap();
        assert_eq!(s.cpu, Some(2));
        assert_eq!(s.memory_mib, Some(11 * 1024));
    }

    #[test]
    fn explicit_values_win_over_auto_but_not_over_the_image_minimum() {
        let mut st = limits(2);
        st.cpu = Some(Resource::Fixed(3));
        st.auto_resources = true;
        assert_eq!(
            size(&st, Minimum::default(), None, false, 16, || 1024)
                .unwrap()
                .cpu,
            Some(3)
        );
        let err = size(&st, min(4, 0), None, false, 16, || 1024).unwrap_err();
        assert_eq!(
            err,
            TooSmall::Image("the image needs at least 4 CPUs, more than the 3 this runner gives each VM (--cpu 3): use an image with a smaller minimum, or the admin can raise --cpu to 4 or more".into())
        );
    }

    /// `--no-auto-resources` keeps the image's own size, which a job chooses: one bigger
    /// than the host fails the job (its image), instead of a VM Virtualization refuses.
    #[test]
    fn without_auto_an_image_bigger_than_the_host_fails_the_job() {
        let mut st = limits(1);
        st.auto_resources = false;
        let own = |cpu, memory_mib| Some(Own { cpu, memory_mib });
        let err = size(&st, Minimum::default(), own(64, 4096), false, 8, || {
            16 * 1024
        })
        .unwrap_err();
        let TooSmall::Image(why) = err else {
            panic!("{err:?}")
        };
        assert!(why.contains("64 CPUs"), "{why}");
        assert!(
            why.contains("more than this host can give any VM (8)"),
            "{why}"
        );
        let err = size(&st, Minimum::default(), own(4, 1 << 20), false, 8, || {
            16 * 1024
        })
        .unwrap_err();
        assert!(
            matches!(&err, TooSmall::Image(why) if why.contains("14336 MiB")),
            "{err:?}"
        );
        assert_eq!(
            size(&st, Minimum::default(), own(8, 14336), false, 8, || 16
                * 1024)
            .unwrap(),
            Sizing {
                cpu: None,
                memory_mib: None
            }
        );
    }

    /// The admin's explicit `--cpu`/`--memory` are bounded by the host too; the admin's
    /// to fix, named as such.
    #[test]
    fn an_explicit_value_beyond_the_host_names_the_admins_setting() {
        let mut st = limits(1);
        st.cpu = Some(Resource::Fixed(32));
        let err = size(&st, Minimum::default(), None, false, 8, || 16 * 1024).unwrap_err();
        assert_eq!(
            err,
            TooSmall::Settings("--cpu 32 gives each VM more CPUs than this host can give any VM (8): the admin can lower --cpu to 8 or less, or use `auto`".into())
        );
        st.cpu = None;
        st.memory = Some(Resource::Fixed(64 * 1024));
        st.auto_resources = false;
        let err = size(&st, Minimum::default(), None, false, 8, || 16 * 1024).unwrap_err();
        assert!(
            matches!(&err, TooSmall::Settings(why) if why.contains("--memory 65536") && why.contains("14336 MiB")),
            "{err:?}"
        );
    }

    #[test]
    fn without_auto_the_image_keeps_its_resources() {
        let mut st = limits(1);
        st.auto_resources = false;
        assert_eq!(
            size(&st, Minimum::default(), None, false, 16, || 1024).unwrap(),
            Sizing {
                cpu: None,
                memory_mib: None
            }
        );
    }

    /// Warm VMs run beside the jobs' and take their share: the message says so.
    #[test]
    fn the_share_named_counts_the_warm_pool() {
        let mut st = limits(1);
        st.warm_pool = 1;
        let err = size(&st, min(1, 8192), None, false, 8, || 16 * 1024).unwrap_err();
        let TooSmall::Image(why) = err else {
            panic!("{err:?}")
        };
        assert!(why.contains("--concurrency 1 plus --warm-pool 1"), "{why}");
    }
}
