//! Which boot of this host is running: an expiry counted on the boot clock
//! (`crate::clock::boot_secs`) means something only within the boot that wrote it, since that
//! clock restarts near zero after a reboot.
//!
//! Linux names each boot in `/proc/sys/kernel/random/boot_id`, macOS in
//! `kern.bootsessionuuid` (never `kern.boottime`, which moves with the wall clock). A system
//! root moved by `TART_DRIVER_HOST_ROOT` (the test bed's simulated Mac) that holds its own
//! `proc/sys/kernel/random/boot_id` names the boot instead, so tests can reboot it.

/// Where Linux names the boot, under the system root.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id; `None` when the host does not say (then expiries are compared as if
/// written in this boot, as before boot ids were recorded).
pub fn id() -> Option<String> {
    let simulated = super::host_root::path(BOOT_ID);
    let text = std::fs::read_to_string(simulated).ok().or_else(system_id)?;
    let id: String = text.trim().chars().filter(|c| !c.is_whitespace()).collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(target_os = "linux")]
fn system_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID).ok()
}

#[cfg(target_os = "macos")]
fn system_id() -> Option<String> {
    // The boot session's UUID, which the kernel makes once per boot. Not `kern.boottime`:
    // that is the wall clock minus the uptime, so it moves whenever the clock is stepped
    // (an NTP step after wake, an admin setting the date), and every live record would then
    // look like another boot's and be swept.
    let mut buf = [0u8; 64];
    let mut len: libc::size_t = buf.len();
    // SAFETY: the buffer is ours and `len` its size; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.bootsessionuuid".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let text = std::str::from_utf8(buf.get(..len)?).ok()?;
    let uuid = text.trim_end_matches('\0').trim();
    (!uuid.is_empty()).then(|| format!("session-{uuid}"))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn system_id() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_names_its_boot_the_same_way_twice() {
        let id = super::id().expect("Linux and macOS name the boot");
        assert!(!id.contains(char::is_whitespace), "{id}");
        assert_eq!(super::id(), Some(id));
    }
}
