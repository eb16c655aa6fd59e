//! Which images a job may run on an Orchard fleet.
//!
//! A worker pulls and clones a VM's image with its own `tart login`s, and Orchard's VM spec
//! has no field for a job's registry credentials (spec/orchard.md §2.7; Orchard's `v1.VM`
//! has none): the job's `TART_REGISTRY_*` never reach the worker, and nothing on a worker
//! asks whether this job may have the image. So a job could run any image some worker can
//! reach, another project's private image included. Unless the admin lets every job use the
//! workers' logins (`--host-registry-credentials`), a job's image must be one the admin
//! declared usable by everyone (`--public-image`), before any VM exists.

use crate::failure::Failure;
use crate::host::registry_policy::Policy;
use crate::job::image::Image;

/// Refuses `image` unless the admin's registry policy lets every job run it on the fleet.
/// `job_has_credentials`: the job set TART_REGISTRY_*, which the message then says are
/// not passed on.
pub fn check(policy: &Policy, image: &Image, job_has_credentials: bool) -> Result<(), Failure> {
    if policy.host_credentials || policy.is_public(&image.name) {
        return Ok(());
    }
    let theirs = if job_has_credentials {
        " (the job's TART_REGISTRY_* cannot be passed to a worker: Orchard has no field for them)"
    } else {
        ""
    };
    Err(Failure::rejected(format!(
        "image `{}` is not declared public on this runner, and on Orchard a worker pulls it with its own `tart login`s, so any job could run any image the workers can reach{theirs}: use an image the admin marked public, or ask the admin to add it with --public-image (YAML public_images), or to let every job use the workers' logins (--host-registry-credentials)",
        image.name
    )))
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn image(name: &str) -> Image {
        Image {
            name: name.into(),
            host: Some("ghcr.io".into()),
        }
    }

    fn refusal(result: Result<(), Failure>) -> String {
        match result {
            Err(Failure::Rejected(why)) => why.to_string(),
            other => panic!("not a build failure: {other:?}"),
        }
    }

    #[test]
    fn an_image_not_declared_public_is_a_build_failure_naming_the_option() {
        let why = refusal(check(
            &Policy::default(),
            &image("ghcr.io/a/private:1"),
            false,
        ));
        assert!(why.contains("`ghcr.io/a/private:1`"), "{why}");
        assert!(why.contains("--public-image"), "{why}");
        assert!(!why.contains("TART_REGISTRY_"), "{why}");
    }

    #[test]
    fn a_jobs_own_registry_credentials_do_not_make_an_image_usable() {
        let why = refusal(check(
            &Policy::default(),
            &image("ghcr.io/a/private:1"),
            true,
        ));
        assert!(why.contains("TART_REGISTRY_* cannot be passed"), "{why}");
    }

    #[test]
    fn an_image_declared_public_is_accepted() {
        let policy = Policy {
            public_images: vec![Regex::new("^ghcr\\.io/org/.*$").unwrap()],
            host_credentials: false,
        };
        assert!(check(&policy, &image("ghcr.io/org/base:1"), false).is_ok());
        assert!(check(&policy, &image("ghcr.io/other/base:1"), false).is_err());
    }

    #[test]
    fn the_admin_may_let_every_job_use_the_workers_logins() {
        let policy = Policy {
            public_images: Vec::new(),
            host_credentials: true,
        };
        assert!(check(&policy, &image("ghcr.io/a/private:1"), false).is_ok());
    }
}
