//! macOS VMs this driver did not start. Apple's limit of two macOS guests per Mac counts
//! every macOS VM on the host: other users', other TART_HOMEs', a developer's, another
//! tool's. The driver's own slots cannot know them, so a job whose slot was free can still
//! see `tart run` fail at the limit; Tart's error then names only the VMs of its own
//! TART_HOME, often none. Such a job waits for the host, as it waits for a slot.

use std::time::{Duration, Instant};

use crate::host::vm::VmState;

/// The start of Tart's error when Apple's limit is reached.
const LIMIT_MESSAGE: &str = "The number of VMs exceeds the system limit";

/// How long a job waits before it tries `tart run` again at the limit.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How often the job log is reminded that the job is still waiting.
const NOTICE_EVERY: Duration = Duration::from_secs(30);

/// The longest a job waits for macOS VMs it did not start, whatever its timeout: a Mac
/// whose places stay taken for an hour needs a person, not more patience.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Apple's limit: macOS guests a Mac runs at once.
const APPLE_LIMIT: usize = 2;

/// The stale-slot bug is diagnosed only after this many refusals with room on the Mac...
const STALE_REFUSALS: u32 = 3;

/// ...over at least this long: a VM that was just shutting down has left by then.
const STALE_SPAN: Duration = Duration::from_secs(10);

/// The executable of Virtualization's per-VM XPC process: one runs for every VM on the Mac,
/// whoever started it and whatever its guest.
pub const VM_PROCESS: &str = "com.apple.Virtualization.VirtualMachine";

/// Whether this VM's `tart run` ended at Apple's limit.
pub fn hit_the_limit(state: &VmState) -> bool {
    state
        .run_ending()
        .is_some_and(|ending| ending.contains(LIMIT_MESSAGE))
}

/// How many VMs run on this Mac, from Virtualization's per-VM processes (every user's;
/// macOS and Linux guests alike, so it is at least the number of macOS guests).
pub fn virtualization_vms() -> usize {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, UpdateKind};
    let root = crate::host::host_root::root();
    let mut system = sysinfo::System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_exe(UpdateKind::Always),
    );
    system
        .processes()
        .values()
        .filter(|p| p.thread_kind().is_none())
        .filter_map(|p| p.exe())
        .filter(|exe| exe.file_name() == Some(VM_PROCESS.as_ref()) && exe.starts_with(&root))
        .count()
}

/// How many VMs of this user's Tart home run (Tart holds a lock on a running VM's
/// `config.json`): each is a Virtualization VM process, so [`virtualization_vms`] cannot
/// be lower unless it missed some.
pub fn own_running_vms() -> usize {
    let Some(vms) = crate::host::tart_home::home().map(|home| home.join("vms")) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(vms) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| locked(&entry.path().join("config.json")))
        .count()
}

/// What the Mac's VM processes say about a refusal at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Two or more VMs run: the limit is really full.
    Full,
    /// Fewer than two VMs run: the limit has room, yet macOS refused.
    Room,
    /// Fewer VM processes than VMs this user's Tart runs: the listing missed some, so the
    /// count proves nothing.
    Unknown,
}

impl Count {
    fn of(vms: usize, own_running: usize) -> Count {
        if vms < own_running {
            Count::Unknown
        } else if vms < APPLE_LIMIT {
            Count::Room
        } else {
            Count::Full
        }
    }
}

/// A job waiting for macOS VMs it did not start to leave room.
pub struct LimitWait {
    started: Instant,
    deadline: Instant,
    last_notice: Option<Instant>,
    /// Refusals at the limit with room on the Mac since the last one without, and when
    /// the first of them came.
    refused_with_room: u32,
    first_refused_with_room: Option<Instant>,
}

/// Why a job stops waiting at the limit.
pub enum GiveUp {
    /// macOS 26's stale-slot bug: the limit is reached with fewer VMs running.
    StaleSlots(anyhow::Error),
    /// The job's share of its timeout is spent.
    TimeUp(anyhow::Error),
}

impl LimitWait {
    /// `started` is when prepare began: the wait ends a tenth of the job's timeout (at
    /// least 10 s) before the timeout counted from then (gitlab-runner ends the job at its
    /// timeout, and the reason must reach the job log first), and never after an hour.
    pub fn new(started: Instant, job_limit: Duration) -> LimitWait {
        LimitWait {
            started: Instant::now(),
            deadline: started + wait_limit(job_limit),
            last_notice: None,
            refused_with_room: 0,
            first_refused_with_room: None,
        }
    }

    /// After `tart run` failed at the limit: whether to try again after [`RETRY_PAUSE`]
    /// (telling the job log why), or to give up. `vms` is [`virtualization_vms`],
    /// `own_running` is [`own_running_vms`]. The stale-slot bug is diagnosed only from
    /// [`STALE_REFUSALS`] refusals with fewer than two VMs on the Mac, none with two or
    /// more in between, over at least [`STALE_SPAN`]: not a VM that was just leaving. A
    /// count below `own_running` is no evidence either way.
    pub fn next(&mut self, state: &VmState, vms: usize, own_running: usize) -> Result<(), GiveUp> {
        let tart = state.run_ending().unwrap_or_default();
        self.judge(&tart, vms, own_running, Instant::now())?;
        self.notice(&tart);
        Ok(())
    }

    /// [`LimitWait::next`]'s verdict on a refusal at `now`; `tart` is Tart's message.
    fn judge(
        &mut self,
        tart: &str,
        vms: usize,
        own_running: usize,
        now: Instant,
    ) -> Result<(), GiveUp> {
        match Count::of(vms, own_running) {
            Count::Full => {
                self.refused_with_room = 0;
                self.first_refused_with_room = None;
            }
            Count::Room => {
                self.refused_with_room += 1;
                self.first_refused_with_room.get_or_insert(now);
            }
            Count::Unknown => {}
        }
        let stale_for = self
            .first_refused_with_room
            .map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
        if self.refused_with_room >= STALE_REFUSALS && stale_for >= STALE_SPAN {
            return Err(GiveUp::StaleSlots(anyhow::anyhow!(
                "macOS refuses to start a macOS VM at its limit of two although only {vms} VM(s) run on this Mac ({} refusals over {}s; Tart: {tart}): this is macOS 26's stale-slot bug (a VM that shut itself down keeps its place). Fix: reboot the Mac; jobs of other Macs are not affected",
                self.refused_with_room,
                stale_for.as_secs()
            )));
        }
        if now + RETRY_PAUSE >= self.deadline {
            return Err(GiveUp::TimeUp(anyhow::anyhow!(
                "macOS VMs not started by this driver kept Apple's two-VM limit full for {}s (Tart: {tart}): stop them, or run macOS jobs on another Mac; `gitlab-runner-tart-driver doctor` lists the VMs it can see",
                now.saturating_duration_since(self.started).as_secs(),
            )));
        }
        Ok(())
    }

    /// Tells the job log why it waits, once and then every half minute.
    fn notice(&mut self, tart: &str) {
        if self.last_notice.is_some_and(|t| t.elapsed() < NOTICE_EVERY) {
            return;
        }
        eprintln!(
            "Waiting for the Mac's macOS VM limit: macOS VMs not started by this driver (another user's, another TART_HOME's, a developer's) fill Apple's two places although this runner's slots are free; retrying for up to {}s (waited {}s; Tart: {tart}). `gitlab-runner-tart-driver doctor` lists the VMs it can see",
            self.deadline.saturating_duration_since(self.started).as_secs(),
            self.started.elapsed().as_secs()
        );
        self.last_notice = Some(Instant::now());
    }
}

impl From<GiveUp> for crate::failure::Failure {
    fn from(give_up: GiveUp) -> Self {
        match give_up {
            GiveUp::StaleSlots(e) | GiveUp::TimeUp(e) => crate::failure::Failure::System(e),
        }
    }
}

/// How long a job may wait at the limit: its timeout less a tenth (at least 10 s) left
/// for the message to reach the job log, and at most an hour.
fn wait_limit(job_limit: Duration) -> Duration {
    let margin = (job_limit / 10).max(Duration::from_secs(10));
    job_limit.saturating_sub(margin).min(LONGEST_WAIT)
}

/// What `doctor` can see of the VMs on this Mac, whoever started them.
pub struct Survey {
    pub detail: String,
    /// Set when VMs that this driver did not start are in sight.
    pub fix: Option<String>,
}

/// Looks for VMs this driver did not start: `tart run` processes and the Virtualization
/// framework's per-VM processes in `ps` (every user's; macOS may show another user's
/// `tart run` only as `(tart)`, without its arguments), and VMs of other users' default
/// TART_HOMEs under `/Users/*/.tart` that this user may read. The driver's VMs of another
/// runner user, or of another state directory (`own_state_dir` has no record of them), are
/// named too: slots and warm pools are per state directory, Apple's limit is the Mac's.
pub fn survey(own_tart_home: Option<&std::path::Path>, own_state_dir: &std::path::Path) -> Survey {
    let ps = std::process::Command::new("ps")
        .args(["-axww", "-o", "uid=,user=,pid=,args="])
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut runs = Vec::new();
    let mut other_runners = Vec::new();
    let mut vz = 0;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() }.to_string();
    for line in ps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(uid), Some(user), Some(pid)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let args: Vec<&str> = fields.collect();
        if args
            .iter()
            .any(|a| a.contains("com.apple.Virtualization.VirtualMachine"))
        {
            vz += 1;
        }
        let tart_run = args
            .windows(2)
            .position(|w| w[0].rsplit('/').next() == Some("tart") && w[1] == "run");
        match tart_run {
            Some(i) => {
                let vm = args.get(i + 2).copied().unwrap_or("?");
                if !vm.starts_with(crate::host::vm::PREFIX) {
                    runs.push(format!("`tart run {vm}` (user {user}, pid {pid})"));
                } else if uid != me {
                    other_runners.push(format!("driver VM {vm} of runner user {user} (pid {pid})"));
                } else if !own_state_dir.join("vms").join(vm).exists() {
                    other_runners.push(format!(
                        "driver VM {vm} of another state directory (pid {pid})"
                    ));
                }
            }
            None if args.first() == Some(&"(tart)") => {
                runs.push(format!(
                    "a tart process of user {user} (pid {pid}, arguments hidden)"
                ));
            }
            None => {}
        }
    }
    let mut homes = Vec::new();
    for home in other_tart_homes(own_tart_home) {
        let Ok(entries) = std::fs::read_dir(home.join("vms")) else {
            continue;
        };
        for entry in entries.flatten() {
            let config = entry.path().join("config.json");
            let Ok(text) = std::fs::read(&config) else {
                continue;
            };
            let os = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|c| c["os"].as_str().map(String::from))
                .unwrap_or_else(|| "darwin".into());
            if os == "darwin" && locked(&config) {
                homes.push(format!(
                    "running macOS VM {} in {}",
                    entry.file_name().to_string_lossy(),
                    home.display()
                ));
            }
        }
    }
    let shared = !other_runners.is_empty();
    let mut seen = runs;
    seen.extend(homes);
    seen.extend(other_runners);
    let vz_note = format!(
        "{vz} Virtualization framework VM process(es) on this Mac (all users, macOS and Linux guests alike)"
    );
    if seen.is_empty() {
        Survey {
            detail: format!("no VM started outside this driver in sight; {vz_note}"),
            fix: None,
        }
    } else {
        Survey {
            detail: format!(
                "VMs not started by this driver: {}; {vz_note}. Apple's limit of two macOS VMs counts them all: macOS jobs wait while they fill it",
                seen.join(", ")
            ),
            fix: Some(if shared {
                "another runner (user or state directory) drives VMs on this Mac: its slots, --concurrency and warm pool are its own, while Apple's two macOS VMs are the Mac's, so each runner's macOS jobs and warm VMs wait for the other's. Give each runner a Mac of its own, or one runner user and state directory for all jobs; otherwise keep the runners' --macos-vm-limit summing to at most 2".into()
            } else {
                "stop the macOS VMs this runner does not need (`tart stop <name>` as their user), or run macOS jobs on a Mac of their own".into()
            }),
        }
    }
}

/// Default TART_HOMEs of other users (`/Users/<user>/.tart`), except our own.
fn other_tart_homes(own: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    let Ok(users) = std::fs::read_dir("/Users") else {
        return Vec::new();
    };
    let own = own.and_then(|p| p.canonicalize().ok());
    users
        .flatten()
        .map(|u| u.path().join(".tart"))
        .filter(|home| home.is_dir() && home.canonicalize().ok() != own)
        .collect()
}

/// Whether some process holds Tart's lock on a VM's `config.json` (a running VM).
fn locked(config: &std::path::Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(file) = std::fs::File::open(config) else {
        return false;
    };
    // SAFETY: F_GETLK on a descriptor we own, with a zeroed struct it fills in.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    rc == 0 && i64::from(lock.l_type) != i64::from(libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals at the limit, `pause` apart, each with `vms` VM processes and `own` VMs of
    /// this user's Tart running; the index of the one that gave up on the stale-slot bug.
    fn stale_verdict(counts: &[(usize, usize)], pause: Duration) -> Option<usize> {
        let start = Instant::now();
        let mut wait = LimitWait::new(start, Duration::from_secs(3600));
        counts.iter().enumerate().find_map(|(i, &(vms, own))| {
            let now = start + pause * i as u32;
            match wait.judge("The number of VMs exceeds the system limit", vms, own, now) {
                Err(GiveUp::StaleSlots(_)) => Some(i),
                Err(GiveUp::TimeUp(_)) => panic!("timed out at refusal {i}"),
                Ok(()) => None,
            }
        })
    }

    #[test]
    fn the_stale_slot_bug_needs_three_refusals_with_room_over_ten_seconds() {
        let pause = RETRY_PAUSE + Duration::from_millis(100);
        // 2.1 s apart: the third refusal comes after 4.2 s, the sixth after 10.5 s.
        assert_eq!(stale_verdict(&[(0, 0); 8], pause), Some(5));
        // Ten seconds apart, the third refusal is enough.
        assert_eq!(
            stale_verdict(&[(1, 0); 4], Duration::from_secs(10)),
            Some(2)
        );
        assert_eq!(stale_verdict(&[(0, 0); 2], Duration::from_secs(60)), None);
    }

    #[test]
    fn a_full_mac_between_refusals_starts_the_count_again() {
        let counts = [(0, 0), (0, 0), (2, 0), (0, 0), (0, 0), (0, 0)];
        assert_eq!(stale_verdict(&counts, Duration::from_secs(10)), Some(5));
    }

    #[test]
    fn fewer_vm_processes_than_own_running_vms_prove_nothing() {
        // The listing missed VMs this user's Tart runs: no refusal counts.
        assert_eq!(stale_verdict(&[(0, 1); 20], Duration::from_secs(10)), None);
        assert_eq!(stale_verdict(&[(1, 2); 20], Duration::from_secs(10)), None);
        // One VM process for one own VM is a Mac with room.
        assert_eq!(
            stale_verdict(&[(1, 1); 3], Duration::from_secs(10)),
            Some(2)
        );
    }

    #[test]
    fn the_wait_at_the_limit_ends_before_the_job_timeout_and_after_at_most_an_hour() {
        assert_eq!(
            wait_limit(Duration::from_secs(600)),
            Duration::from_secs(540)
        );
        assert_eq!(wait_limit(Duration::from_secs(30)), Duration::from_secs(20));
        assert_eq!(wait_limit(Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(wait_limit(Duration::from_secs(3 * 3600)), LONGEST_WAIT);
        assert_eq!(wait_limit(Duration::from_secs(u64::MAX)), LONGEST_WAIT);
    }
}
