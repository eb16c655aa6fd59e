//! Soak: many jobs, two at a time, through one runner, with faults mixed in at random. Every
//! job's verdict must be the one its fault calls for, and at the end nothing may be left:
//! no VM, no process (supervisor, `tart run`, guest, ssh master), no state, no socket, no
//! held slot.
//!
//! CI runs a small count (every kind of job at least once). The full run:
//!
//! ```sh
//! TART_DRIVER_SOAK_JOBS=200 cargo test --release --test soak -- --nocapture
//! ```
//!
//! `TART_DRIVER_SOAK_SEED=<n>` replays a run; the seed is printed either way.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Bed, LINUX, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, JobOutcome, Verdict};

/// The kinds of job the soak mixes, each with the fault it injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    MacosOk,
    LinuxOk,
    ScriptExits,
    RunDies,
    RejectsLogins,
    CloneDiskFull,
    PullFails,
    GuestDiesInRun,
    NeverAnIp,
    CancelledInBuild,
    HostileImage,
}

const KINDS: [(Kind, u32); 11] = [
    (Kind::MacosOk, 30),
    (Kind::LinuxOk, 15),
    (Kind::ScriptExits, 10),
    (Kind::RunDies, 6),
    (Kind::RejectsLogins, 6),
    (Kind::CloneDiskFull, 6),
    (Kind::PullFails, 5),
    (Kind::GuestDiesInRun, 6),
    (Kind::NeverAnIp, 4),
    (Kind::CancelledInBuild, 6),
    (Kind::HostileImage, 6),
];

const RUN_DIES: &str = "ghcr.io/soak/run-dies:latest";
const REJECTS: &str = "ghcr.io/soak/rejects-logins:latest";
const DISK_FULL: &str = "ghcr.io/soak/disk-full:latest";
const PULL_FAILS: &str = "ghcr.io/soak/pull-fails:latest";
const GUEST_DIES: &str = "ghcr.io/soak/guest-dies:latest";
const NEVER_IP: &str = "ghcr.io/soak/never-ip:latest";

/// xorshift64*: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pick(rng: &mut Rng) -> Kind {
    let total: u32 = KINDS.iter().map(|(_, w)| w).sum();
    let mut at = rng.below(u64::from(total)) as u32;
    for (kind, weight) in KINDS {
        if at < weight {
            return kind;
        }
        at -= weight;
    }
    unreachable!()
}

/// A check of a job's outcome (Err says what was wrong).
type Check = Box<dyn Fn(&JobOutcome) -> Result<(), String> + Send>;

/// The job for a kind, and a check of its outcome.
fn job_for(kind: Kind, n: usize, rng: &mut Rng) -> (Job, Check) {
    let marker = format!("soak-job-{n}-done");
    let system = |needle: &'static str| -> Check {
        Box::new(move |o: &JobOutcome| match &o.verdict {
            Verdict::SystemFailure { .. } if o.log.contains(needle) => Ok(()),
            v => Err(format!(
                "expected a system failure saying `{needle}`, got {v:?}"
            )),
        })
    };
    match kind {
        Kind::MacosOk | Kind::LinuxOk => {
            let image = if kind == Kind::MacosOk { MACOS } else { LINUX };
            let m = marker.clone();
            (
                Job::new().image(image).script([format!("echo {marker}")]),
                Box::new(move |o| match o.verdict {
                    Verdict::Success if o.log.contains(&m) => Ok(()),
                    ref v => Err(format!("expected success with `{m}`, got {v:?}")),
                }),
            )
        }
        Kind::ScriptExits => {
            let code = 2 + rng.below(120) as i32;
            (
                Job::new().image(MACOS).script([format!("exit {code}")]),
                Box::new(move |o| match o.verdict {
                    Verdict::BuildFailure { exit_code } if exit_code == code => Ok(()),
                    ref v => Err(format!("expected build failure {code}, got {v:?}")),
                }),
            )
        }
        Kind::RunDies => (
            Job::new().image(RUN_DIES).script(["true"]),
            system("the VM stopped while booting"),
        ),
        Kind::RejectsLogins => (
            Job::new().image(REJECTS).script(["true"]),
            system("refused SSH login"),
        ),
        Kind::CloneDiskFull => (
            Job::new().image(DISK_FULL).script(["true"]),
            system("No space left on device"),
        ),
        Kind::PullFails => (
            Job::new().image(PULL_FAILS).script(["true"]),
            system("NSURLErrorDomain"),
        ),
        // Dies in the run stage, or in prepare when the host is slow: the guest's own words
        // reach the job log either way, and it is never the user's failure.
        Kind::GuestDiesInRun => (
            Job::new().image(GUEST_DIES).script(["sleep 60"]),
            Box::new(|o: &JobOutcome| match &o.verdict {
                Verdict::SystemFailure { .. }
                    if o.log.contains("guest has stopped the virtual machine")
                        || o.log.contains("The VM is gone") =>
                {
                    Ok(())
                }
                v => Err(format!(
                    "expected a system failure for a lost VM, got {v:?}"
                )),
            }),
        ),
        Kind::NeverAnIp => (
            Job::new()
                .image(NEVER_IP)
                .var("TART_EXECUTOR_TIMEOUT", "2")
                .script(["true"]),
            system("no IP address within the boot timeout"),
        ),
        Kind::CancelledInBuild => (
            Job::new()
                .image(MACOS)
                .script(["sleep 60"])
                .cancel_after("build_script", Duration::from_millis(500 + rng.below(1500))),
            Box::new(|o| match o.verdict {
                Verdict::Canceled => Ok(()),
                ref v => Err(format!("expected canceled, got {v:?}")),
            }),
        ),
        Kind::HostileImage => {
            let images = [
                "--dir=/:/x",
                "-x",
                "ghcr.io/a/b:1 --net-bridged",
                "ghcr.io/a/b:1;id",
                "../../etc",
            ];
            let image = images[rng.below(images.len() as u64) as usize];
            (
                Job::new().image(image).script(["true"]),
                Box::new(|o| match o.verdict {
                    Verdict::BuildFailure { exit_code: 1 }
                        if o.log.contains("not a valid image reference") =>
                    {
                        Ok(())
                    }
                    ref v => Err(format!("expected a rejected image, got {v:?}")),
                }),
            )
        }
    }
}

#[test]
fn jobs_two_at_a_time_with_random_faults_all_end_right_and_leave_nothing() {
    let total: usize = std::env::var("TART_DRIVER_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("TART_DRIVER_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("soak: {total} jobs, TART_DRIVER_SOAK_SEED={seed}");

    let bed = Bed::new()
        .image(RUN_DIES, Image::darwin().run_dies(None))
        .image(REJECTS, Image::darwin().reject_logins())
        .image(DISK_FULL, Image::darwin().clone_fails_disk())
        .image(PULL_FAILS, Image::linux().pull_fails())
        .image(GUEST_DIES, Image::linux().guest_dies_after_ms(5000))
        .image(NEVER_IP, Image::linux().never_ip())
        // A 2-core test box gives each VM 1 CPU, below macOS's minimum of 2.
        .option(["--concurrency", "2", "--cpu", "2", "--timeout", "60"]);
    let runner = bed.runner();

    // Every kind once (in a seeded order), then weighted random picks.
    let mut rng = Rng(seed);
    let mut kinds: Vec<Kind> = KINDS.iter().map(|(k, _)| *k).collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    kinds.truncate(total);
    while kinds.len() < total {
        kinds.push(pick(&mut rng));
    }
    let plan: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(n, &k)| (k, job_for(k, n, &mut rng)))
        .collect();
    let plan = Mutex::new(plan.into_iter().enumerate().collect::<Vec<_>>().into_iter());

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((n, (kind, (job, check)))) = plan.lock().unwrap().next() else {
                    return;
                };
                let t = Instant::now();
                let out = run_job(&runner, &job);
                let verdict = check(&out);
                let done = next.fetch_add(1, Ordering::Relaxed) + 1;
                if done.is_multiple_of(20) {
                    eprintln!("soak: {done}/{total} jobs after {:.0?}", started.elapsed());
                }
                if let Err(why) = &verdict {
                    eprintln!("soak: job {n} ({kind:?}) WRONG: {why}\n{}", out.log);
                } else if t.elapsed() > Duration::from_secs(30) {
                    eprintln!(
                        "soak: job {n} ({kind:?}) SLOW: {:.1?}\n{}",
                        t.elapsed(),
                        out.log
                    );
                }
                results
                    .lock()
                    .unwrap()
                    .push((kind, verdict, t.elapsed(), out.verdict.clone()));
            });
        }
    });
    let elapsed = started.elapsed();
    let results = results.into_inner().unwrap();

    let mut per_kind: BTreeMap<String, (usize, usize, Duration)> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, ok, took, verdict) in &results {
        let e = per_kind.entry(format!("{kind:?}")).or_default();
        e.0 += 1;
        e.1 += usize::from(ok.is_err());
        e.2 = e.2.max(*took);
        let v = match verdict {
            Verdict::Success => "success".to_string(),
            Verdict::BuildFailure { .. } => "build failure".into(),
            Verdict::SystemFailure { .. } => "system failure".into(),
            Verdict::Canceled => "canceled".into(),
            Verdict::TimedOut => "timed out".into(),
        };
        *verdicts.entry(v).or_default() += 1;
    }
    let faults = results
        .iter()
        .filter(|(k, ..)| !matches!(k, Kind::MacosOk | Kind::LinuxOk | Kind::ScriptExits))
        .count();
    eprintln!(
        "soak: {} jobs in {:.1}s (seed {seed}), {faults} with an injected fault",
        results.len(),
        elapsed.as_secs_f64()
    );
    eprintln!("soak: verdicts {verdicts:?}");
    for (kind, (count, wrong, slowest)) in &per_kind {
        eprintln!("soak:   {kind:<16} {count:>4} jobs, {wrong} wrong, slowest {slowest:.1?}");
    }
    let left = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = bed.left_behind();
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eprintln!("soak: leaks found: {}", left.len());
    let wrong: usize = per_kind.values().map(|v| v.1).sum();
    assert_eq!(results.len(), total);
    assert_eq!(wrong, 0, "{wrong} jobs ended wrong (seed {seed})");
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    // Slots: both free again (taking them proves no process holds them).
    assert!(bed.held_slots().is_empty());
}
