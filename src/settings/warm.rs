//! The admin's warm-pool settings: `--warm-pool`, `--warm-image`, `--warm-expiry` and their
//! YAML keys (`warm_pool`, `warm_images`, `warm_expiry`). A flag wins over the file.
//!
//! None of them is a job's to change (`request.rs` has no `Overridable` for them): how many
//! VMs this host keeps booted, and from which images, spends the host's memory and Apple's
//! two macOS slots, which are the admin's.

use std::time::Duration;

use anyhow::{bail, Result};

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Warm pool (admin only, never set by jobs)")]
pub struct WarmOptions {
    /// Keep up to N VMs cloned and booted ahead of jobs, so a job skips the boot [default: 0, off]
    #[arg(long = "warm-pool", value_name = "N")]
    pub pool: Option<u32>,

    /// Image the warm pool boots (repeatable) [default: --default-image]
    #[arg(long = "warm-image", value_name = "IMAGE")]
    pub images: Vec<String>,

    /// Minutes a warm VM may wait for a job before it is replaced [default: 240]
    #[arg(long = "warm-expiry", value_name = "MINUTES")]
    pub expiry_minutes: Option<u64>,
}

/// What the warm pool keeps ready. `pool == 0` turns every part of it off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WarmSettings {
    pub pool: u32,
    pub images: Vec<String>,
    pub expiry: Duration,
}

pub const DEFAULT_EXPIRY_MINUTES: u64 = 240;

impl WarmSettings {
    /// Merges flags over the file's keys; `default_image` fills an empty image list.
    pub fn merge(
        o: &WarmOptions,
        file_pool: Option<u32>,
        file_images: Vec<String>,
        file_expiry: Option<u64>,
        default_image: Option<&str>,
    ) -> Result<WarmSettings> {
        let pool = o.pool.or(file_pool).unwrap_or(0);
        let mut images = if o.images.is_empty() {
            file_images
        } else {
            o.images.clone()
        };
        if images.is_empty() {
            images.extend(default_image.map(str::to_string));
        }
        if pool > 0 && images.is_empty() {
            bail!("--warm-pool {pool} needs an image to boot: set --warm-image or --default-image");
        }
        if let Some(bad) = images.iter().find(|i| {
            i.trim().is_empty() || i.starts_with('-') || i.chars().any(char::is_whitespace)
        }) {
            bail!("--warm-image `{bad}` is not an image name such as ghcr.io/org/image:tag");
        }
        let minutes = o
            .expiry_minutes
            .or(file_expiry)
            .unwrap_or(DEFAULT_EXPIRY_MINUTES);
        if minutes == 0 {
            bail!("--warm-expiry must be at least 1 minute");
        }
        Ok(WarmSettings {
            pool,
            images,
            expiry: Duration::from_secs(minutes * 60),
        })
    }

    pub fn enabled(&self) -> bool {
        self.pool > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_pool_size_the_pool_is_off_and_needs_no_image() {
        let s = WarmSettings::merge(&WarmOptions::default(), None, vec![], None, None).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.expiry, Duration::from_secs(240 * 60));
    }

    #[test]
    fn the_warm_images_default_to_the_default_image_and_flags_win_over_the_file() {
        let s = WarmSettings::merge(
            &WarmOptions {
                pool: Some(2),
                ..Default::default()
            },
            Some(1),
            vec![],
            Some(30),
            Some("ghcr.io/org/img:1"),
        )
        .unwrap();
        assert_eq!(
            (s.pool, s.images.clone()),
            (2, vec!["ghcr.io/org/img:1".to_string()])
        );
        assert_eq!(s.expiry, Duration::from_secs(30 * 60));
        let s = WarmSettings::merge(
            &WarmOptions {
                images: vec!["a:1".into()],
                ..Default::default()
            },
            Some(1),
            vec!["b:1".into()],
            None,
            Some("c:1"),
        )
        .unwrap();
        assert_eq!(s.images, vec!["a:1".to_string()]);
    }

    #[test]
    fn a_pool_without_any_image_is_refused_with_the_fix() {
        let err = WarmSettings::merge(&WarmOptions::default(), Some(1), vec![], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--warm-image"), "{err}");
    }
}
