//! Which image a job gets: the job's `image:` or the admin's default, checked against the
//! admin's allow and exclude lists, pulled according to the pull policy, with registry
//! credentials matched to the image's host.

use std::time::Duration;

use anyhow::Result;
use regex::Regex;

use crate::failure::Failure;
use crate::host::tart::{Fetch, Tart};
use crate::job::JobContext;
use crate::model::PullPolicy;
use crate::settings::Settings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// The registry host, for OCI images; None for a local VM used as an image.
    pub host: Option<String>,
}

impl Image {
    /// Parses and vets an image reference. Anything that could be taken for a Tart option
    /// or carries odd characters is refused before it reaches a command line.
    pub fn parse(name: &str, settings: &Settings) -> Result<Image, Failure> {
        let name = name.trim();
        let oci = Regex::new(
            r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?)/[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?$",
        )
        .expect("valid regex");
        let local = Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$").expect("valid regex");
        if let Some(caps) = oci.captures(name) {
            if name.contains("..") {
                return Err(Failure::rejected(format!(
                    "image `{name}` is not a valid OCI reference"
                )));
            }
            // One spelling per registry: `GHCR.IO`, `ghcr.io.` or `ghcr.io:443` reach the same
            // registry as `ghcr.io` but would slip past the admin's image lists and
            // credentials, which name `ghcr.io`.
            let host = &caps[1];
            let canonical = canonical_host(host, settings.insecure_pull)?;
            if canonical != host {
                return Err(Failure::rejected(format!(
                    "image `{name}` spells its registry `{host}`: write it `{canonical}{}` (lower case, no trailing dot, no default port)",
                    &name[host.len()..]
                )));
            }
            // Tart caches `name:latest` for an untagged name; match the cache by that name.
            let tagged = caps.get(6).is_some();
            let name = if tagged {
                name.to_string()
            } else {
                format!("{name}:latest")
            };
            return Ok(Image {
                name,
                host: Some(caps[1].to_string()),
            });
        }
        if local.is_match(name) {
            // Another job's VM is no image: Tart would copy its disk while it runs.
            if name.starts_with(crate::host::vm::PREFIX) {
                return Err(Failure::rejected(format!(
                    "image `{name}` is a job VM of this driver, not an image"
                )));
            }
            if !settings.allow_local_images {
                return Err(Failure::rejected(format!(
                    "image `{name}` is not an OCI image reference (host/repository:tag); local VM names as images are off on this runner (--allow-local-images)"
                )));
            }
            return Ok(Image {
                name: name.to_string(),
                host: None,
            });
        }
        Err(Failure::rejected(format!(
            "image `{}` is not a valid image reference: use host/repository:tag, e.g. ghcr.io/cirruslabs/macos-sequoia-base:latest",
            name.escape_debug()
        )))
    }

    /// An OCI image's name without its tag or digest (`host/namespace`).
    pub fn repository(&self) -> &str {
        if let Some((repo, _)) = self.name.split_once('@') {
            return repo;
        }
        match self.name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => &self.name,
        }
    }

    /// The job's image, or the admin's default, vetted against the admin's lists.
    pub fn for_job(job: &JobContext, settings: &Settings) -> Result<Image, Failure> {
        let requested = job.image.clone().or_else(|| settings.default_image.clone()).ok_or_else(|| {
            Failure::rejected(
                "this job has no `image:` and the runner has no default image: add `image: <tart image>` to the job, or set --default-image",
            )
        })?;
        let image = Image::parse(&requested, settings)?;
        if let Some(rule) = settings
            .exclude_images
            .iter()
            .find(|r| r.is_match(&image.name))
        {
            return Err(Failure::rejected(format!(
                "image `{}` is excluded on this runner (matches `{}`): choose another image",
                image.name,
                rule.as_str()
            )));
        }
        if !settings.allow_images.is_empty()
            && !settings
                .allow_images
                .iter()
                .any(|r| r.is_match(&image.name))
        {
            return Err(Failure::rejected(format!(
                "image `{}` is not in this runner's allowed images ({}): choose an allowed image",
                image.name,
                settings
                    .allow_images
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(image)
    }
}

/// A registry host as the admin's lists and credentials name it: lower case, without a
/// trailing dot, without the port HTTPS uses anyway (443; with `--insecure-pull` Tart
/// may speak plain HTTP, whose port is another, so 443 is kept there).
fn canonical_host(host: &str, insecure_pull: bool) -> Result<String, Failure> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => {
            let port: u16 = port.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                Failure::rejected(format!("registry `{host}`: `{port}` is not a port"))
            })?;
            (name, Some(port))
        }
        None => (host, None),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    Ok(match port {
        Some(443) if !insecure_pull => name,
        Some(port) => format!("{name}:{port}"),
        None => name,
    })
}

/// Whether the policy wants `image` pulled now. `clone` pulls a missing OCI image by
/// itself, so `never` has to be enforced here, before the clone.
pub fn must_pull(image: &Image, policy: PullPolicy, cached: bool) -> Result<bool, Failure> {
    match (policy, &image.host, cached) {
        (_, None, true) => Ok(false),
        (_, None, false) => {
            Err(Failure::rejected(format!("local VM `{}` does not exist on this host", image.name)))
        }
        (PullPolicy::Always, Some(_), _) => Ok(true),
        (PullPolicy::IfNotPresent, Some(_), cached) => Ok(!cached),
        (PullPolicy::Never, Some(_), true) => Ok(false),
        (PullPolicy::Never, Some(_), false) => Err(Failure::rejected(format!(
            "image `{}` is not on this host and the pull policy is `never`: ask the admin to run `tart pull {}`, or use another pull policy",
            image.name, image.name
        ))),
    }
}

/// Pulls `image` (the caller has decided it must, with `must_pull`).
pub async fn pull(
    tart: &Tart,
    image: &Image,
    fetch: &Fetch,
    limit: Duration,
) -> Result<(), Failure> {
    tart.pull(&image.name, fetch, limit).await.map_err(|e| {
        // A registry that does not know the image: the job named something that is not there.
        if format!("{e:#}").contains("code: 404") {
            return Failure::rejected(format!(
                "image `{}` does not exist in its registry: check the name and tag ({e:#})",
                image.name
            ));
        }
        Failure::System(anyhow::anyhow!("{e:#}. Check the image name and the registry credentials (TART_REGISTRY_USERNAME/TART_REGISTRY_PASSWORD)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Options;

    fn settings() -> Settings {
        Settings::load(&Options::default()).unwrap()
    }

    #[test]
    fn oci_reference_parses_with_host() {
        let i = Image::parse("ghcr.io/cirruslabs/macos-sequoia-base:latest", &settings()).unwrap();
        assert_eq!(i.host.as_deref(), Some("ghcr.io"));
        let i = Image::parse(
            "registry.local:5000/team/img@sha256:"
                .to_string()
                .add64()
                .as_str(),
            &settings(),
        )
        .unwrap();
        assert_eq!(i.host.as_deref(), Some("registry.local:5000"));
    }

    #[test]
    fn a_registry_host_spelled_otherwise_is_refused_naming_the_canonical_form() {
        for (spelled, canonical) in [
            ("GHCR.IO/org/base:1", "ghcr.io/org/base:1"),
            ("Ghcr.io/org/base:1", "ghcr.io/org/base:1"),
            ("ghcr.io:443/org/base:1", "ghcr.io/org/base:1"),
            ("ghcr.io./org/base:1", "ghcr.io/org/base:1"),
            ("ghcr.io.:0443/org/base", "ghcr.io/org/base"),
            (
                "registry.local:05000/org/base:1",
                "registry.local:5000/org/base:1",
            ),
        ] {
            let Err(Failure::Rejected(why)) = Image::parse(spelled, &settings()) else {
                panic!("{spelled} was not refused");
            };
            let why = why.to_string();
            assert!(why.contains(&format!("write it `{canonical}`")), "{why}");
        }
    }

    #[test]
    fn an_excluded_image_stays_excluded_whatever_the_spelling_of_its_host() {
        let s = Settings::load(&Options {
            exclude_images: vec!["^ghcr\\.io/org/secret".into()],
            ..Default::default()
        })
        .unwrap();
        for name in [
            "ghcr.io/org/secret:1",
            "GHCR.IO/org/secret:1",
            "ghcr.io:443/org/secret:1",
            "ghcr.io./org/secret:1",
        ] {
            let job = JobContext {
                job_id: 1,
                runner_token: "t".into(),
                image: Some(name.into()),
                project_id: None,
                job_timeout_secs: None,
            };
            assert!(Image::for_job(&job, &s).is_err(), "{name} got through");
        }
    }

    #[test]
    fn port_443_is_kept_when_pulls_may_be_plain_http() {
        let mut s = settings();
        s.insecure_pull = true;
        let i = Image::parse("registry.local:443/org/base:1", &s).unwrap();
        assert_eq!(i.host.as_deref(), Some("registry.local:443"));
    }

    #[test]
    fn option_injection_through_image_is_refused() {
        for bad in [
            "--insecure",
            "-x",
            "ghcr.io/a/b:latest --dir /:/x",
            "ghcr.io/a/b;rm",
            "ghcr.io/../b:1",
            "a\nb",
        ] {
            assert!(Image::parse(bad, &settings()).is_err(), "{bad}");
        }
    }

    #[test]
    fn untagged_images_mean_latest_as_tart_caches_them() {
        let i = Image::parse("ghcr.io/cirruslabs/ubuntu", &settings()).unwrap();
        assert_eq!(i.name, "ghcr.io/cirruslabs/ubuntu:latest");
        let i = Image::parse("ghcr.io/cirruslabs/ubuntu:22.04", &settings()).unwrap();
        assert_eq!(i.name, "ghcr.io/cirruslabs/ubuntu:22.04");
    }

    #[test]
    fn the_repository_is_the_name_without_tag_or_digest() {
        let s = settings();
        let repo = |name: &str| Image::parse(name, &s).unwrap().repository().to_string();
        assert_eq!(
            repo("registry.local:5000/team/img:1.0"),
            "registry.local:5000/team/img"
        );
        assert_eq!(
            repo("registry.local:5000/team/img"),
            "registry.local:5000/team/img"
        );
        let digest = "ghcr.io/a/b@sha256:".to_string().add64();
        assert_eq!(repo(&digest), "ghcr.io/a/b");
    }

    #[test]
    fn another_jobs_vm_is_not_an_image() {
        let mut s = settings();
        s.allow_local_images = true;
        assert!(Image::parse("tartdrv-abc-42", &s).is_err());
    }

    #[test]
    fn local_names_need_the_admin_switch() {
        assert!(Image::parse("my-golden-vm", &settings()).is_err());
        let mut s = settings();
        s.allow_local_images = true;
        assert!(Image::parse("my-golden-vm", &s).is_ok());
    }

    trait Add64 {
        fn add64(self) -> String;
    }
    impl Add64 for String {
        fn add64(self) -> String {
            self + &"a".repeat(64)
        }
    }
}
