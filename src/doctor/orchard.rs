//! `doctor --backend orchard`: the controller's URL, TLS trust, the service account's token
//! and roles, and the fleet's capacity, each with the fix. Nothing is created or changed on
//! the controller: the role probes are requests the controller refuses either way (a create
//! without a name, a port-forward to a VM that does not exist), and only the status tells
//! whether the role is there.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::Method;

use super::report::Check;
use crate::orchard::capacity;
use crate::orchard::client::{read_token, ApiError, Client};
use crate::orchard::settings::OrchardSettings;
use crate::orchard::trust::Trust;
use crate::settings::Settings;

/// A VM name no one uses, for the port-forward role probe.
const PROBE_VM: &str = "tartdrv-doctor-probe-0";
const ROLES_FIX: &str = "give the service account the roles compute:read and compute:write on the controller (`orchard create service-account NAME --roles …` makes one)";

pub(super) fn check(settings: &Settings) -> Vec<Check> {
    let Some(orchard) = &settings.orchard else {
        return vec![Check::fail(
            "orchard settings",
            "no Orchard controller configured",
            "give --orchard-url, --orchard-service-account and --orchard-token-file (or the `orchard:` section of the --config file: url, service_account, token_file)",
        )];
    };
    let mut checks = vec![Check::pass(
        "orchard settings",
        format!("{} as `{}`", orchard.url, orchard.service_account),
    )];
    checks.push(check_isolation(settings));
    checks.push(check_images(settings));
    let token = check_token_file(orchard);
    checks.push(token.check);
    if !token.go_on {
        return checks;
    }
    let client = match Client::new(orchard) {
        Ok(c) => c,
        Err(e) => {
            let fix = match &orchard.trust {
                Trust::SystemRoots => "Orchard's default certificate is self-signed anyway: pin it with --orchard-ca-fingerprint or --orchard-ca-file (the controller's certificate, PEM)",
                _ => "point --orchard-ca-file at the controller's certificate (PEM), or give --orchard-ca-fingerprint",
            };
            checks.push(Check::fail("orchard TLS trust", format!("{e:#}"), fix));
            return checks;
        }
    };
    let runtime = crate::rt::runtime();
    checks.extend(runtime.block_on(check_controller(settings, orchard, &client)));
    checks
}

/// One check of a chain, and whether the checks after it can tell anything.
struct Step {
    check: Check,
    go_on: bool,
}

/// The controller's own checks, in order: each stops the chain when the next could only
/// fail the same way.
async fn check_controller(
    settings: &Settings,
    orchard: &OrchardSettings,
    client: &Client,
) -> Vec<Check> {
    let reachable = check_reachable(orchard, client).await;
    let mut checks = vec![reachable.check];
    if !reachable.go_on {
        return checks;
    }
    checks.push(trust_passed(orchard, client));
    let account = check_account(client).await;
    checks.push(account.check);
    if !account.go_on {
        return checks;
    }
    let roles = check_roles(client).await;
    checks.push(roles.check);
    if roles.go_on {
        checks.push(check_capacity(settings, orchard, client).await);
    }
    checks
}

fn check_token_file(orchard: &OrchardSettings) -> Step {
    const NAME: &str = "orchard token file";
    let path = &orchard.token_file;
    if let Err(e) = read_token(orchard) {
        return Step {
            check: Check::fail(NAME, format!("{e:#}"), format!("write the service account's token into {} (one line, mode 0600, owned by the runner's user)", path.display())),
            go_on: false,
        };
    }
    let check = match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Check::warn(
            NAME,
            format!(
                "{} is readable by other users (mode {:o})",
                path.display(),
                m.permissions().mode() & 0o777
            ),
            format!(
                "`chmod 600 {}`: the token can delete any VM of the fleet",
                path.display()
            ),
        ),
        _ => Check::pass(NAME, format!("{} holds a token", path.display())),
    };
    Step { check, go_on: true }
}

async fn check_reachable(orchard: &OrchardSettings, client: &Client) -> Step {
    match client.liveness().await {
        Ok(()) => Step {
            check: Check::pass("orchard controller", format!("{} answers", orchard.url)),
            go_on: true,
        },
        Err(e) => {
            let check = match client.seen_fingerprint() {
                Some(seen) if e.to_string().contains("TLS") => Check::fail(
                    "orchard TLS trust",
                    format!("{e}"),
                    trust_fix(&orchard.trust, &seen),
                ),
                _ => Check::fail(
                    "orchard controller",
                    format!("{e}"),
                    "check --orchard-url (host, port 6120 by default, https) and that `orchard controller run` listens there and this host may reach it",
                ),
            };
            Step {
                check,
                go_on: false,
            }
        }
    }
}

fn trust_passed(orchard: &OrchardSettings, client: &Client) -> Check {
    const NAME: &str = "orchard TLS trust";
    if !orchard.url.tls {
        return if orchard.url.is_loopback() {
            Check::pass(NAME, "plain http on this host's loopback")
        } else {
            Check::warn(NAME, format!("{} is plain http (--orchard-allow-plain-http): the token and every job's bytes cross the network unencrypted", orchard.url), "use https (the controller's default), or keep plain http only behind a TLS-terminating proxy on the same host")
        };
    }
    let seen = client.seen_fingerprint().unwrap_or_default();
    let how = match &orchard.trust {
        Trust::Fingerprint(_) => "the pinned fingerprint".to_string(),
        Trust::CaFile(path) => format!("the pinned {}", path.display()),
        Trust::SystemRoots => "the system's root certificates".to_string(),
    };
    Check::pass(
        NAME,
        format!("certificate SHA-256 {seen} trusted through {how}"),
    )
}

fn trust_fix(trust: &Trust, seen: &str) -> String {
    let compare = format!("compare {seen} with the fingerprint the controller's own host shows (e.g. `orchard context create` there)");
    match trust {
        Trust::Fingerprint(_) => format!("the controller presents another certificate than the pinned one: if it was replaced on purpose, {compare}, then pin the new one with --orchard-ca-fingerprint"),
        Trust::CaFile(path) => format!("the controller's certificate is neither {} nor signed by it: {compare}, then pin the right certificate", path.display()),
        Trust::SystemRoots => format!("Orchard's default certificate is self-signed: {compare}, then pin it with --orchard-ca-fingerprint {seen} or --orchard-ca-file"),
    }
}

async fn check_account(client: &Client) -> Step {
    const NAME: &str = "orchard service account";
    let check = match client.info().await {
        Ok(info) => {
            let detail = format!(
                "`{}` accepted; controller version {}",
                client.account, info.version
            );
            return Step {
                check: Check::pass(NAME, detail),
                go_on: true,
            };
        }
        Err(e @ ApiError::Unauthorized { .. }) => Check::fail(NAME, e.to_string(), "check the name given to --orchard-service-account and the token in --orchard-token-file (`orchard list service-accounts` on the controller shows both)"),
        Err(e) => Check::fail(NAME, e.to_string(), "see the controller's log"),
    };
    Step {
        check,
        go_on: false,
    }
}

/// What the account may do, from requests the controller refuses either way.
async fn check_roles(client: &Client) -> Step {
    const NAME: &str = "orchard roles";
    let probes: [(&str, Method, &str, Option<&[u8]>); 2] = [
        ("compute:read", Method::GET, "/vms", None),
        ("compute:write", Method::POST, "/vms", Some(b"{}")),
    ];
    let mut missing: Vec<String> = Vec::new();
    for (role, method, path, body) in probes {
        match client.probe(method, path, body).await {
            Ok((status @ (401 | 403), answer)) => {
                // Orchard names the roles it wanted; ours is the fallback.
                let named = ApiError::from_status(status, &answer, &client.account).missing_roles();
                if named.is_empty() {
                    missing.push(role.to_string());
                } else {
                    missing.extend(named);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let check = Check::fail(
                    NAME,
                    format!("probing {role}: {e}"),
                    "run doctor again; see the controller's log if it persists",
                );
                return Step {
                    check,
                    go_on: false,
                };
            }
        }
    }
    if missing.is_empty() {
        let detail = format!(
            "`{}` has compute:read and compute:write (which includes compute:connect)",
            client.account
        );
        return Step {
            check: Check::pass(NAME, detail),
            go_on: true,
        };
    }
    let connect = client
        .probe(
            Method::GET,
            &format!("/vms/{PROBE_VM}/port-forward?port=22&wait=0"),
            None,
        )
        .await;
    let can_connect = matches!(connect, Ok((status, _)) if status != 401 && status != 403);
    let check = Check::fail(
        NAME,
        format!(
            "service account `{}` lacks {}{}: the driver creates, watches and deletes VMs",
            client.account,
            missing.join(" and "),
            if can_connect {
                " (it has compute:connect)"
            } else {
                ""
            }
        ),
        ROLES_FIX,
    );
    Step {
        check,
        go_on: !missing.iter().any(|m| m == "compute:read"),
    }
}

/// Softnet on the workers: the controller places other runners' and jobs' VMs on the Mac
/// that runs this job's, on Tart's shared NAT network.
fn check_isolation(settings: &Settings) -> Check {
    const NAME: &str = "orchard VM isolation";
    if settings.softnet {
        return Check::pass(
            NAME,
            "every job's VM asks for Softnet (netSoftnet); each worker needs Softnet installed setuid root, or its VMs fail to start",
        );
    }
    Check::warn(
        NAME,
        "Softnet is off: a job's VM shares a worker's NAT network with whatever other VMs the controller places on that Mac (other runners' and other jobs'), and can reach them or send as their IP and MAC address",
        "drop --no-softnet / `softnet: false` (Softnet is on by default with --backend orchard), and install Softnet setuid root on every worker",
    )
}

/// Which images jobs may run: workers pull with their own logins, so only images the admin
/// declared public are accepted (see `backend::orchard::images`).
fn check_images(settings: &Settings) -> Check {
    const NAME: &str = "orchard images";
    let policy = &settings.registry;
    if policy.host_credentials {
        return Check::warn(
            NAME,
            "--host-registry-credentials: any job may run any image the workers' `tart login`s can pull, another project's private image included",
            "drop --host-registry-credentials and list the images every job may use with --public-image",
        );
    }
    if policy.public_images.is_empty() {
        return Check::fail(
            NAME,
            "no image is declared public, and on Orchard a job may run only those (a worker pulls with its own logins, never the job's): every job will be refused",
            "list the images every job on this runner may use with --public-image REGEX (YAML public_images)",
        );
    }
    let list: Vec<&str> = policy.public_images.iter().map(|r| r.as_str()).collect();
    Check::pass(
        NAME,
        format!("jobs may run only images matching {}", list.join(", ")),
    )
}

async fn check_capacity(settings: &Settings, orchard: &OrchardSettings, client: &Client) -> Check {
    const NAME: &str = "orchard workers";
    let (workers, vms) = match (client.list_workers().await, client.list_vms().await) {
        (Ok(w), Ok(v)) => (w, v),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(NAME, e.to_string(), "see the controller's log");
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let placement = &orchard.placement;
    let room = capacity::room(&workers, &vms, placement, now);
    let wants = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let labels = if placement.labels.is_empty() {
        String::new()
    } else {
        format!(" with the labels {}", wants(&placement.labels))
    };
    let each = placement
        .resources
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(",");
    let detail = format!(
        "{} of {} workers online and not paused, {} of them macOS workers{labels}; room for {} of this runner's VMs ({each} each), {} free now",
        room.usable,
        workers.len(),
        room.matching,
        room.slots,
        room.free
    );
    if room.usable == 0 {
        Check::fail(NAME, detail, "start `orchard worker run` on each Mac (with a bootstrap token for this controller), resume paused workers, and check that they reach the controller")
    } else if room.matching == 0 {
        Check::fail(NAME, detail, "no online Mac worker has every label of --orchard-label (YAML orchard.labels): start the workers with `orchard worker run --labels KEY=VALUE`, or change the runner's labels")
    } else if let (0, Some(lacking)) = (room.slots, &room.lacking) {
        Check::fail(NAME, detail, format!("no matching worker offers enough `{lacking}` for one VM: lower it in --orchard-resource (YAML orchard.resources), or give the workers more with `orchard worker run --resources {lacking}=N`"))
    } else if u64::from(settings.concurrency) > room.slots {
        Check::warn(
            NAME,
            format!("{detail}; --concurrency {} is more than the {} VMs the fleet holds", settings.concurrency, room.slots),
            format!("lower --concurrency and config.toml `concurrent` to {} or add Macs: GitLab's job timer runs while a VM waits in `pending`", room.slots),
        )
    } else {
        Check::pass(NAME, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use crate::orchard::settings::Backend;
    use crate::settings::Options;

    /// Orchard settings from `options` (the controller's own settings play no part here).
    fn on_orchard(mut options: Options) -> Settings {
        options.orchard.backend = Some(Backend::Orchard);
        Settings::load(&options).unwrap()
    }

    fn one(check: fn(&Settings) -> Check, settings: &Settings) -> (Status, String, String) {
        let c = check(settings);
        (
            c.status,
            c.detail.clone(),
            c.fix.clone().unwrap_or_default(),
        )
    }

    #[test]
    fn softnet_is_on_by_default_for_a_single_job_at_a_time_on_the_fleet() {
        let settings = on_orchard(Options::default());
        assert_eq!(settings.concurrency, 1);
        assert!(settings.softnet);
        let (status, detail, _) = one(check_isolation, &settings);
        assert_eq!(status, Status::Pass, "{detail}");
    }

    #[test]
    fn softnet_turned_off_on_the_fleet_is_a_warning_with_the_fix() {
        let settings = on_orchard(Options {
            no_softnet: true,
            ..Options::default()
        });
        assert!(!settings.softnet);
        let (status, detail, fix) = one(check_isolation, &settings);
        assert_eq!(status, Status::Warn);
        assert!(detail.contains("Softnet is off"), "{detail}");
        assert!(fix.contains("--no-softnet"), "{fix}");
    }

    #[test]
    fn no_public_image_fails_since_every_job_would_be_refused() {
        let (status, detail, fix) = one(check_images, &on_orchard(Options::default()));
        assert_eq!(status, Status::Fail, "{detail}");
        assert!(fix.contains("--public-image"), "{fix}");
    }

    #[test]
    fn the_public_images_are_named() {
        let settings = on_orchard(Options {
            public_images: vec![r"^ghcr\.io/org/".into()],
            ..Options::default()
        });
        let (status, detail, _) = one(check_images, &settings);
        assert_eq!(status, Status::Pass);
        assert!(detail.contains(r"^ghcr\.io/org/"), "{detail}");
    }

    #[test]
    fn lending_the_workers_logins_to_every_job_is_a_warning() {
        let settings = on_orchard(Options {
            host_registry_credentials: true,
            ..Options::default()
        });
        let (status, detail, _) = one(check_images, &settings);
        assert_eq!(status, Status::Warn, "{detail}");
    }
}
