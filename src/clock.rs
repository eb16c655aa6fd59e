//! Time the driver can trust: deadlines that cannot overflow, and a clock for moments that
//! other processes compare later (a VM's expiry), which the wall clock would make unsafe.
//!
//! The wall clock jumps (NTP, an admin, a dead RTC battery): an expiry written in wall-clock
//! time would make a jump forward sweep live VMs. The boot clock counts from boot, sleep
//! included, is the same for every process, and never jumps. After a reboot it restarts, so
//! a moment kept on it names its boot too (`host::boot`): one of another boot has passed.

use std::time::{Duration, Instant};

/// `now + limit`, or about a century ahead for limits beyond what an `Instant` holds (an
/// admin's `--timeout 18446744073709551615` means "no limit", not a panic).
pub fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Seconds since boot, sleep included.
pub fn boot_secs() -> u64 {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    // macOS's CLOCK_MONOTONIC keeps counting while the Mac sleeps.
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_beyond_any_instant_is_far_ahead_not_a_panic() {
        let d = deadline_after(Duration::from_secs(u64::MAX));
        assert!(d > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn the_boot_clock_advances_with_time() {
        let a = boot_secs();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(boot_secs() > a);
    }
}
