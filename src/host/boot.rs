//! Which boot of this host is running: an expiry counted on the boot clock
//! (`crate::clock::boot_secs`) means something only within the boot that wrote it, since that
//! clock restarts near zero after a reboot.
//!
//! Linux names each boot in `/proc/sys/kernel/random/boot_id`; macOS has no boot id, but
//! the moment it booted (`kern.boottime`) differs between boots. A system root moved by
//! `TART_DRIVER_HOST_ROOT` (the test bed's simulated Mac) that holds its own
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
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>();
    // SAFETY: kern.boottime is a struct timeval; the buffer is ours and `len` its size.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.boottime".as_ptr(),
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && tv.tv_sec > 0).then(|| format!("boottime-{}.{:06}", tv.tv_sec, tv.tv_usec))
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
