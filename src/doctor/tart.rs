//! Tart and what it holds: its version, its VMs and images (`tart list`), Apple's limit of
//! macOS VMs, VMs the driver did not start, Tart's home directory and this driver's VMs in
//! it.

use std::path::Path;

use super::disk::{free_bytes, gb, GB};
use super::probe::{is_executable, parse_version, resolve, run_bounded, Located, COMMAND_LIMIT};
use super::report::{Check, Status};
use super::tart_list::{entry_is_oci, entry_is_running, entry_name, entry_size_gb, TartList};
use crate::host::ownership::{self, Claim};
use crate::host::state_dir::{self, StateDir, VMS};
use crate::host::vm::{VmName, VmState, PREFIX};
use crate::model::TransportKind;
use crate::settings::Settings;

/// Tart reads every VM's config for `list`, which can take longer on a big cache.
/// `tart exec` (the exec transport) needs Tart 2.27.
const TART_EXEC_VERSION: (u64, u64) = (2, 27);

/// Checks tart; returns its path when it can be run.
pub(super) fn check_tart(settings: &Settings) -> Located {
    let exe = &settings.tart_executable;
    let Some(path) = resolve(exe) else {
        return Located::unusable(Check::fail(
            TART,
            format!("`{exe}` not found (PATH={})", std::env::var("PATH").unwrap_or_default()),
            "install Tart (`brew install openai/tools/tart`; formerly cirruslabs/cli/tart) or give its absolute path with --tart-executable: gitlab-runner started by launchd has a minimal PATH",
        ));
    };
    if !is_executable(&path) {
        return Located::unusable(Check::fail(
            TART,
            format!("{} is not executable", path.display()),
            format!(
                "`chmod +x {}`, or point --tart-executable at the real tart",
                path.display()
            ),
        ));
    }
    let version = match tart_version(&path) {
        Ok(version) => version,
        Err(check) => return Located::unusable(check),
    };
    let needs_exec = settings.transport != TransportKind::Ssh;
    Located {
        check: version_check(&path, &version, needs_exec),
        path: Some(path),
    }
}

const TART: &str = "tart";

/// The first line of `tart --version`, or the failed check.
fn tart_version(path: &Path) -> Result<String, Check> {
    let fix = "reinstall Tart; run `tart --version` by hand to see what is wrong";
    match run_bounded(path, &["--version"], COMMAND_LIMIT) {
        Ok(out) if out.ok() => Ok(out.stdout.lines().next().unwrap_or("").trim().to_string()),
        Ok(out) => Err(Check::fail(
            TART,
            format!("`{} --version` failed: {}", path.display(), out.message()),
            fix,
        )),
        Err(e) => Err(Check::fail(TART, e, fix)),
    }
}

/// Whether Tart's `version` is recent enough for the transport (`needs_exec`).
fn version_check(path: &Path, version: &str, needs_exec: bool) -> Check {
    match parse_version(version) {
        Some((ma, mi, _)) if (ma, mi) < TART_EXEC_VERSION => {
            let detail = format!(
                "{} is version {version}, older than 2.27: no `tart exec`, no control socket",
                path.display()
            );
            let fix = "upgrade Tart (`brew upgrade tart`) to 2.27 or later";
            if needs_exec {
                Check::fail(TART, format!("{detail}, which --transport exec/auto needs"), fix)
            } else {
                Check::warn(TART, detail, fix)
            }
        }
        Some(_) => Check::pass(TART, format!("{}, version {version}", path.display())),
        None if version == "SNAPSHOT" => Check::pass(
            TART,
            format!("{}, a development build (SNAPSHOT)", path.display()),
        ),
        None => Check::warn(
            TART,
            format!("{}: cannot read a version from `{version}`", path.display()),
            "check that --tart-executable is Tart itself and not a wrapper that prints something else",
        ),
    }
}

/// `host/org/image` of `host/org/image:tag` or `host/org/image@sha256:…`.
pub(super) fn image_repository(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
        _ => name.to_string(),
    }
}

pub(super) fn looks_macos(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "macos", "sonoma", "sequoia", "tahoe", "ventura", "monterey", "xcode",
    ]
    .iter()
    .any(|w| n.contains(w))
}

pub(super) fn check_macos_limit(settings: &Settings, list: Option<&TartList>) -> Check {
    const NAME: &str = "macOS VM limit";
    let (n, limit) = (settings.concurrency, settings.macos_vm_limit);
    if limit > 2 {
        return Check::fail(
            NAME,
            format!("--macos-vm-limit {limit}: Apple's Virtualization framework runs at most 2 macOS guests; the third fails with \"The number of VMs exceeds the system limit\""),
            "set --macos-vm-limit 2 (or leave it out)",
        );
    }
    if n <= limit {
        return Check::pass(
            NAME,
            format!("--concurrency {n} fits Apple's limit of {limit} macOS guests"),
        );
    }
    let macos = macos_images(settings, list);
    if macos.is_empty() {
        Check::pass(
            NAME,
            format!("--concurrency {n} with no macOS image in sight; macOS jobs would still run at most {limit} at a time"),
        )
    } else {
        Check::warn(
            NAME,
            format!(
                "--concurrency {n} but Apple allows {limit} macOS guests: with macOS images ({}) at most {limit} jobs run at once and the others wait for a macOS slot, spending their boot timeout",
                macos.join(", ")
            ),
            format!("on a host that runs only macOS jobs set concurrent and --concurrency to {limit}; keep {n} only when Linux jobs fill the other slots"),
        )
    }
}

/// The repositories of the macOS images in sight: cached in Tart, or the default image.
fn macos_images(settings: &Settings, list: Option<&TartList>) -> Vec<String> {
    let mut macos: Vec<String> = list
        .and_then(|l| l.entries.as_ref().ok())
        .map(|e| {
            e.iter()
                .map(entry_name)
                .filter(|n| !n.starts_with(PREFIX) && looks_macos(n))
                .map(image_repository)
                .collect()
        })
        .unwrap_or_default();
    if let Some(image) = settings.default_image.as_deref().filter(|i| looks_macos(i)) {
        macos.push(image.to_string());
    }
    macos.sort();
    macos.dedup();
    macos
}

/// VMs on this host that the driver did not start (another runner user or state directory,
/// or by hand).
pub(super) fn check_foreign_vms(settings: &Settings) -> Check {
    let seen = crate::host::foreign::survey(
        crate::host::tart_home::home().as_deref(),
        &settings.state_dir,
    );
    let status = [Status::Pass, Status::Warn][usize::from(seen.fix.is_some())];
    Check::new(
        "VMs not started by this driver",
        status,
        seen.detail,
        seen.fix,
    )
}

pub(super) fn check_tart_home(list: Option<&TartList>) -> Check {
    const NAME: &str = "tart home";
    let Some(home) = crate::host::tart_home::home() else {
        return Check::fail(
            NAME,
            "TART_HOME is not set and the user database has no home for this user",
            "set TART_HOME in the runner's environment (launchd: the plist's EnvironmentVariables)",
        );
    };
    let Some((free, on)) = free_bytes(&home) else {
        return Check::warn(
            NAME,
            format!("cannot read the free space of {}", home.display()),
            "check the file system by hand (`df -h`)",
        );
    };
    let exists = if home.exists() {
        String::new()
    } else {
        format!(
            " (does not exist yet; Tart creates it; measured on {})",
            on.display()
        )
    };
    let Some(images) = cached_images(list) else {
        return Check::warn(
            NAME,
            format!(
                "{}{exists}: {} free; cached image sizes unknown (tart list failed)",
                home.display(),
                gb(free)
            ),
            "fix the tart check above, then run doctor again",
        );
    };
    // Each image is listed by tag and by digest: name it by its tag when sizes tie.
    let largest = images
        .iter()
        .max_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then(b.0.contains('@').cmp(&a.0.contains('@')))
        })
        .cloned();
    match largest {
        Some((name, size)) if (free as f64) < size * GB => Check::warn(
            NAME,
            format!(
                "{}{exists}: {} free, less than the largest cached image ({name}, {size:.0} GB): pulling a new version of it fails with \"No space left on device\"",
                home.display(),
                gb(free)
            ),
            "remove unused images (`tart prune --entries caches --older-than 7`, or `tart delete NAME`) or free disk space",
        ),
        Some((name, size)) => Check::pass(
            NAME,
            format!(
                "{}{exists}: {} free; {} cached image entries, the largest {name} ({size:.0} GB)",
                home.display(),
                gb(free),
                images.len()
            ),
        ),
        None => Check::pass(
            NAME,
            format!("{}{exists}: {} free; no cached images", home.display(), gb(free)),
        ),
    }
}

/// The OCI images Tart has cached, with their sizes in GB; `None` when `tart list` failed.
fn cached_images(list: Option<&TartList>) -> Option<Vec<(String, f64)>> {
    match list.map(|l| &l.entries) {
        Some(Ok(entries)) => Some(
            entries
                .iter()
                .filter(|e| entry_is_oci(e))
                .filter_map(|e| entry_size_gb(e).map(|s| (entry_name(e).to_string(), s)))
                .collect(),
        ),
        _ => None,
    }
}

/// The local VMs (a line), then, when `tart list` answered, this driver's VMs and job
/// states that no live job owns (a second line).
pub(super) fn check_vms(settings: &Settings, list: Option<&TartList>) -> Vec<Check> {
    let entries = match list.map(|l| &l.entries) {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            return vec![Check::fail(
                "VMs",
                e.clone(),
                "run `tart list` by hand; a broken TART_HOME or a hung Tart stops every job",
            )];
        }
        None => return vec![Check::skip("VMs", "tart is not usable (see above)")],
    };
    let local: Vec<&serde_json::Value> = entries.iter().filter(|e| !entry_is_oci(e)).collect();
    let ours: Vec<VmName> = local
        .iter()
        .filter_map(|e| VmName::parse_ours(entry_name(e)))
        .collect();
    vec![
        local_vms_check(&local, ours.len()),
        orphans_check(settings, &find_orphans(settings, &ours)),
    ]
}

/// How many local VMs run, and which running ones this driver did not start.
fn local_vms_check(local: &[&serde_json::Value], ours: usize) -> Check {
    let running = local.iter().filter(|e| entry_is_running(e)).count();
    let foreign_running: Vec<&str> = local
        .iter()
        .filter(|e| entry_is_running(e) && VmName::parse_ours(entry_name(e)).is_none())
        .map(|e| entry_name(e))
        .collect();
    let detail = format!(
        "{} local VMs, {running} running; {ours} of this driver's",
        local.len(),
    );
    if foreign_running.is_empty() {
        return Check::pass("VMs", detail);
    }
    Check::warn(
        "VMs",
        format!(
            "{detail}; running VMs not started by this driver: {} (the driver's slots do not count them, but Apple's 2 macOS guests limit does)",
            foreign_running.join(", ")
        ),
        "stop them with `tart stop NAME` if this host is for CI only",
    )
}

/// This driver's VMs and job states of this state directory that no live job owns, and
/// its VMs that nothing ties to this state directory.
struct Orphans {
    /// The driver's VMs of this state directory whose job is gone.
    vms: Vec<String>,
    /// `state of NAME`: a job's state without its VM and without a live job.
    states: Vec<String>,
    /// The driver's VMs left alone: no record or marker ties them to this state directory.
    foreign: Vec<String>,
    /// All the driver's VMs in `tart list`.
    ours: usize,
}

/// The same proof as the sweep's (`ownership`): a record here whose lock is free, or a
/// marker naming this state directory. Other VMs of this driver are left alone.
/// Whether the VM's lock is free, i.e. no prepare, supervisor or `tart run` holds it:
/// opens the lock read-only and never creates it, so doctor leaves no files behind.
fn find_orphans(settings: &Settings, ours: &[VmName]) -> Orphans {
    let root = match state_dir::inspect(&settings.state_dir) {
        Ok(state_dir::Inspection::Fine { .. }) => {
            StateDir::open_ignoring_socket_limit(&settings.state_dir).ok()
        }
        _ => None,
    };
    let (mut vms, mut foreign, mut states) = (Vec::new(), Vec::new(), Vec::new());
    for name in ours {
        match (
            ownership::claim(name, root.as_ref(), &settings.state_dir),
            &root,
        ) {
            (Claim::Record, Some(root)) if !VmState::new(root, name).lock_is_free() => {}
            (Claim::None, _) => foreign.push(name.to_string()),
            _ => vms.push(name.to_string()),
        }
    }
    let dir = root
        .as_ref()
        .and_then(|r| r.existing_subdir(VMS).ok().flatten());
    if let (Some(root), Some(dir)) = (&root, dir) {
        for file_name in dir.entries() {
            let Some(name) = VmName::parse_ours(&file_name) else {
                continue;
            };
            if !ours.contains(&name) && VmState::new(root, &name).lock_is_free() {
                states.push(format!("state of {name}"));
            }
        }
    }
    Orphans {
        vms,
        states,
        foreign,
        ours: ours.len(),
    }
}

fn orphans_check(settings: &Settings, orphans: &Orphans) -> Check {
    let foreign = if orphans.foreign.is_empty() {
        String::new()
    } else {
        format!(
            "; left alone, as no record or marker ties them to this state directory: {}",
            orphans.foreign.join(", ")
        )
    };
    if orphans.vms.is_empty() && orphans.states.is_empty() {
        return Check::pass(
            "orphaned VMs",
            format!(
                "none: every VM of this state directory belongs to a live job ({} live){foreign}",
                orphans.ours - orphans.foreign.len().min(orphans.ours)
            ),
        );
    }
    let mut fix = String::from("gitlab-runner-tart-driver gc");
    if settings.state_dir.as_os_str() != state_dir::default_path().as_os_str() {
        fix.push_str(&format!(" --state-dir {}", settings.state_dir.display()));
    }
    if settings.tart_executable != "tart" {
        fix.push_str(&format!(" -x {}", settings.tart_executable));
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (vm_count, states) = (orphans.vms.len(), orphans.states.len());
    let mut what = Vec::new();
    if vm_count > 0 {
        what.push(format!("{vm_count} VM{}", plural(vm_count)));
    }
    if states > 0 {
        what.push(format!("{states} leftover job state{}", plural(states)));
    }
    let all: Vec<&str> = orphans
        .vms
        .iter()
        .chain(&orphans.states)
        .map(String::as_str)
        .collect();
    Check::warn(
        "orphaned VMs",
        format!(
            "{} that no live job owns: {}",
            what.join(" and "),
            all.join(", ")
        ),
        format!("`{fix}` (add --dry-run to see first); the next prepare also sweeps them"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repository_drops_tag_and_digest_but_not_port() {
        assert_eq!(
            image_repository("ghcr.io/c/macos:latest"),
            "ghcr.io/c/macos"
        );
        assert_eq!(
            image_repository("ghcr.io/c/macos@sha256:ab"),
            "ghcr.io/c/macos"
        );
        assert_eq!(image_repository("reg:5000/c/macos"), "reg:5000/c/macos");
    }
}
