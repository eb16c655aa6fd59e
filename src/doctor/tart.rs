//! Tart and what it holds: its version, its VMs and images (`tart list`), Apple's limit of
//! macOS VMs, Tart's home directory and this driver's VMs in it.

use std::path::PathBuf;

use super::disk::{free_bytes, gb, GB};
use super::probe::{is_executable, parse_version, resolve, run_bounded, COMMAND_LIMIT};
use super::report::Report;
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
pub(super) fn check_tart(settings: &Settings, r: &mut Report) -> Option<PathBuf> {
    const NAME: &str = "tart";
    let exe = &settings.tart_executable;
    let Some(path) = resolve(exe) else {
        r.fail(
            NAME,
            format!("`{exe}` not found (PATH={})", std::env::var("PATH").unwrap_or_default()),
            "install Tart (`brew install openai/tools/tart`; formerly cirruslabs/cli/tart) or give its absolute path with --tart-executable: gitlab-runner started by launchd has a minimal PATH",
        );
        return None;
    };
    if !is_executable(&path) {
        r.fail(
            NAME,
            format!("{} is not executable", path.display()),
            format!(
                "`chmod +x {}`, or point --tart-executable at the real tart",
                path.display()
            ),
        );
        return None;
    }
    let out = match run_bounded(&path, &["--version"], COMMAND_LIMIT) {
        Ok(out) if out.ok() => out,
        Ok(out) => {
            r.fail(
                NAME,
                format!("`{} --version` failed: {}", path.display(), out.message()),
                "reinstall Tart; run `tart --version` by hand to see what is wrong",
            );
            return None;
        }
        Err(e) => {
            r.fail(
                NAME,
                e,
                "reinstall Tart; run `tart --version` by hand to see what is wrong",
            );
            return None;
        }
    };
    let version = out.stdout.lines().next().unwrap_or("").trim().to_string();
    let needs_exec = settings.transport != TransportKind::Ssh;
    match parse_version(&version) {
        Some((ma, mi, _)) if (ma, mi) < TART_EXEC_VERSION => {
            let detail = format!(
                "{} is version {version}, older than 2.27: no `tart exec`, no control socket",
                path.display()
            );
            let fix = "upgrade Tart (`brew upgrade tart`) to 2.27 or later";
            if needs_exec {
                r.fail(NAME, format!("{detail}, which --transport exec/auto needs"), fix);
            } else {
                r.warn(NAME, detail, fix);
            }
        }
        Some(_) => r.pass(NAME, format!("{}, version {version}", path.display())),
        None if version == "SNAPSHOT" => r.pass(
            NAME,
            format!("{}, a development build (SNAPSHOT)", path.display()),
        ),
        None => r.warn(
            NAME,
            format!("{}: cannot read a version from `{version}`", path.display()),
            "check that --tart-executable is Tart itself and not a wrapper that prints something else",
        ),
    }
    Some(path)
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

pub(super) fn check_macos_limit(settings: &Settings, list: Option<&TartList>, r: &mut Report) {
    const NAME: &str = "macOS VM limit";
    let (n, limit) = (settings.concurrency, settings.macos_vm_limit);
    if limit > 2 {
        r.fail(
            NAME,
            format!("--macos-vm-limit {limit}: Apple's Virtualization framework runs at most 2 macOS guests; the third fails with \"The number of VMs exceeds the system limit\""),
            "set --macos-vm-limit 2 (or leave it out)",
        );
        return;
    }
    if n <= limit {
        r.pass(
            NAME,
            format!("--concurrency {n} fits Apple's limit of {limit} macOS guests"),
        );
        return;
    }
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
    if macos.is_empty() {
        r.pass(
            NAME,
            format!("--concurrency {n} with no macOS image in sight; macOS jobs would still run at most {limit} at a time"),
        );
    } else {
        r.warn(
            NAME,
            format!(
                "--concurrency {n} but Apple allows {limit} macOS guests: with macOS images ({}) at most {limit} jobs run at once and the others wait for a macOS slot, spending their boot timeout",
                macos.join(", ")
            ),
            format!("on a host that runs only macOS jobs set concurrent and --concurrency to {limit}; keep {n} only when Linux jobs fill the other slots"),
        );
    }
}

pub(super) fn check_tart_home(list: Option<&TartList>, r: &mut Report) {
    const NAME: &str = "tart home";
    let Some(home) = crate::host::tart_home::home() else {
        r.fail(
            NAME,
            "TART_HOME is not set and the user database has no home for this user",
            "set TART_HOME in the runner's environment (launchd: the plist's EnvironmentVariables)",
        );
        return;
    };
    let Some((free, on)) = free_bytes(&home) else {
        r.warn(
            NAME,
            format!("cannot read the free space of {}", home.display()),
            "check the file system by hand (`df -h`)",
        );
        return;
    };
    let exists = if home.exists() {
        String::new()
    } else {
        format!(
            " (does not exist yet; Tart creates it; measured on {})",
            on.display()
        )
    };
    let images = match list.map(|l| &l.entries) {
        Some(Ok(entries)) => Some(
            entries
                .iter()
                .filter(|e| entry_is_oci(e))
                .filter_map(|e| entry_size_gb(e).map(|s| (entry_name(e).to_string(), s)))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let Some(images) = images else {
        r.warn(
            NAME,
            format!(
                "{}{exists}: {} free; cached image sizes unknown (tart list failed)",
                home.display(),
                gb(free)
            ),
            "fix the tart check above, then run doctor again",
        );
        return;
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
        Some((name, size)) if (free as f64) < size * GB => r.warn(
            NAME,
            format!(
                "{}{exists}: {} free, less than the largest cached image ({name}, {size:.0} GB): pulling a new version of it fails with \"No space left on device\"",
                home.display(),
                gb(free)
            ),
            "remove unused images (`tart prune --entries caches --older-than 7`, or `tart delete NAME`) or free disk space",
        ),
        Some((name, size)) => r.pass(
            NAME,
            format!(
                "{}{exists}: {} free; {} cached image entries, the largest {name} ({size:.0} GB)",
                home.display(),
                gb(free),
                images.len()
            ),
        ),
        None => r.pass(
            NAME,
            format!("{}{exists}: {} free; no cached images", home.display(), gb(free)),
        ),
    }
}

/// Whether the VM's lock is free, i.e. no prepare, supervisor or `tart run` holds it.
/// Opens the lock read-only and never creates it, so doctor leaves no files behind.
pub(super) fn check_vms(settings: &Settings, list: Option<&TartList>, r: &mut Report) {
    let entries = match list.map(|l| &l.entries) {
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            r.fail(
                "VMs",
                e.clone(),
                "run `tart list` by hand; a broken TART_HOME or a hung Tart stops every job",
            );
            return;
        }
        None => {
            r.skip("VMs", "tart is not usable (see above)");
            return;
        }
    };
    let local: Vec<&serde_json::Value> = entries.iter().filter(|e| !entry_is_oci(e)).collect();
    let ours: Vec<VmName> = local
        .iter()
        .filter_map(|e| VmName::parse_ours(entry_name(e)))
        .collect();
    let running = local.iter().filter(|e| entry_is_running(e)).count();
    let foreign_running: Vec<&str> = local
        .iter()
        .filter(|e| entry_is_running(e) && VmName::parse_ours(entry_name(e)).is_none())
        .map(|e| entry_name(e))
        .collect();
    let detail = format!(
        "{} local VMs, {running} running; {} of this driver's",
        local.len(),
        ours.len()
    );
    if foreign_running.is_empty() {
        r.pass("VMs", detail);
    } else {
        r.warn(
            "VMs",
            format!(
                "{detail}; running VMs not started by this driver: {} (the driver's slots do not count them, but Apple's 2 macOS guests limit does)",
                foreign_running.join(", ")
            ),
            "stop them with `tart stop NAME` if this host is for CI only",
        );
    }

    // The same proof as the sweep's (`ownership`): a record here whose lock is free, or a
    // marker naming this state directory. Other VMs of this driver are left alone.
    let root = match state_dir::inspect(&settings.state_dir) {
        Ok(state_dir::Inspection::Fine { .. }) => {
            StateDir::open_ignoring_socket_limit(&settings.state_dir).ok()
        }
        _ => None,
    };
    let (mut orphans, mut foreign) = (Vec::new(), Vec::new());
    for name in &ours {
        match (
            ownership::claim(name, root.as_ref(), &settings.state_dir),
            &root,
        ) {
            (Claim::Record, Some(root)) if !VmState::new(root, name).lock_is_free() => {}
            (Claim::None, _) => foreign.push(name.to_string()),
            _ => orphans.push(name.to_string()),
        }
    }
    let vm_count = orphans.len();
    let vms = root
        .as_ref()
        .and_then(|r| r.existing_subdir(VMS).ok().flatten());
    if let (Some(root), Some(vms)) = (&root, vms) {
        for file_name in vms.entries() {
            let Some(name) = VmName::parse_ours(&file_name) else {
                continue;
            };
            if !ours.contains(&name) && VmState::new(root, &name).lock_is_free() {
                orphans.push(format!("state of {name}"));
            }
        }
    }
    let foreign = if foreign.is_empty() {
        String::new()
    } else {
        format!(
            "; left alone, as no record or marker ties them to this state directory: {}",
            foreign.join(", ")
        )
    };
    if orphans.is_empty() {
        r.pass(
            "orphaned VMs",
            format!(
                "none: every VM of this state directory belongs to a live job ({} live){foreign}",
                ours.len() - foreign.len().min(ours.len())
            ),
        );
    } else {
        let mut fix = String::from("gitlab-runner-tart-driver gc");
        if settings.state_dir.as_os_str() != state_dir::default_path().as_os_str() {
            fix.push_str(&format!(" --state-dir {}", settings.state_dir.display()));
        }
        if settings.tart_executable != "tart" {
            fix.push_str(&format!(" -x {}", settings.tart_executable));
        }
        r.warn(
            "orphaned VMs",
            {
                let states = orphans.len() - vm_count;
                let mut what = Vec::new();
                if vm_count > 0 {
                    what.push(format!(
                        "{vm_count} VM{}",
                        if vm_count == 1 { "" } else { "s" }
                    ));
                }
                if states > 0 {
                    what.push(format!(
                        "{states} leftover job state{}",
                        if states == 1 { "" } else { "s" }
                    ));
                }
                format!(
                    "{} that no live job owns: {}",
                    what.join(" and "),
                    orphans.join(", ")
                )
            },
            format!("`{fix}` (add --dry-run to see first); the next prepare also sweeps them"),
        );
    }
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
