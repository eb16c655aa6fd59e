//! Config stage: one JSON object on stdout, and nothing else, ever.

use serde_json::json;

use crate::failure::StageResult;
use crate::job::JobContext;
use crate::settings::{Options, Settings};

/// Validates the admin's settings first, so a broken configuration fails the job at its
/// first stage with a message that names the option.
pub fn config(options: &Options) -> StageResult {
    let settings = Settings::load(options)?;
    // The backend's own settings too (an Orchard controller's token file, say).
    crate::backend::Backend::for_settings(&settings)?;
    let hostname = hostname();
    let mut value = json!({
        "builds_dir": settings.guest_builds_dir,
        "cache_dir": settings.guest_cache_dir,
        "builds_dir_is_shared": false,
        "hostname": hostname,
        "driver": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
    });
    // The VM name is derived again by later stages; passing it along makes it visible
    // in their environment for anyone debugging a job.
    if let Ok(job) = JobContext::from_env(&settings) {
        value["job_env"] = json!({ "TARTDRV_VM_NAME": job.vm_name().as_str() });
    }
    println!("{value}");
    Ok(())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "tart-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
