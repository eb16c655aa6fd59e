//! The names and kinds every layer shares, with no I/O and no import from the rest of the
//! crate: how a VM's resources are given, the pull policy, the transport, the settings a
//! job may be allowed to change, and which environment variables carry a job's secrets.
//!
//! May use: nothing in the crate. Used by: everything.

use std::str::FromStr;

use serde::Deserialize;

/// How many CPUs or how much memory a VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Auto,
    Fixed(u64),
}

impl FromStr for Resource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Resource::Auto),
            n => match n.parse::<u64>() {
                Ok(0) => Err("must be at least 1, or `auto`".into()),
                Ok(v) => Ok(Resource::Fixed(v)),
                Err(_) => Err(format!("`{n}` is not a number or `auto`")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Resource::from_str(&n.to_string()),
            Raw::Text(t) => Resource::from_str(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "always" => Ok(PullPolicy::Always),
            "if-not-present" | "if_not_present" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy `{other}`: use always, if-not-present or never"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Ssh,
    Exec,
    Auto,
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "ssh" => Ok(TransportKind::Ssh),
            "exec" => Ok(TransportKind::Exec),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport `{other}`: use ssh, exec or auto"
            )),
        }
    }
}

/// A setting that jobs may be allowed to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Overridable {
    SshCredentials,
    Shell,
    PullPolicy,
    Display,
    Timeout,
    Softnet,
    SoftnetAllow,
    Headless,
    Vnc,
    InstallGitlabRunner,
    Transport,
    RegistryCredentials,
    Timezone,
    RandomMac,
    Nested,
    RootDiskOpts,
    /// `TART_DRIVER_DEBUG`: debug lines in the job log.
    Debug,
}

use Overridable as O;

impl Overridable {
    /// What jobs may change unless the admin says otherwise: everything the original driver
    /// let jobs set, and gitlab-tart-executor's per-VM options, but nothing that widens the
    /// VM's network access, changes its disk semantics, or spends the host's DHCP pool
    /// (a random MAC takes a new 24-hour lease from about 253), and no debug output (it
    /// describes the host).
    pub const DEFAULT: &'static [Overridable] = &[
        O::SshCredentials,
        O::Shell,
        O::PullPolicy,
        O::Display,
        O::Timeout,
        O::Softnet,
        O::Headless,
        O::Vnc,
        O::InstallGitlabRunner,
        O::Transport,
        O::RegistryCredentials,
        O::Timezone,
        O::Nested,
    ];

    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// Names of the variables in our environment that carry the job's data: its variables
/// (`CUSTOM_ENV_*`: registry and SSH passwords, `CI_JOB_TOKEN`) and the payload file. A
/// process that outlives the stage (the supervisor, `tart run`, the ssh master) must not
/// inherit them, or any local user who can read its /proc environ reads the secrets.
pub fn job_env_names() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CUSTOM_ENV_") || k == "JOB_RESPONSE_FILE"
        })
        .collect()
}

/// Property tests of the kinds parsed from the admin's and the job's text: whatever the text,
/// parsing never panics and accepts only the kinds' own names.
#[cfg(test)]
mod hostile_tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::{PullPolicy, Resource, TransportKind};
    use crate::testing::hostile;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn resources_are_auto_or_a_positive_number(s in hostile(), n in 1u64..1_000_000) {
            match Resource::from_str(&s) {
                Ok(Resource::Auto) => prop_assert_eq!(s.trim(), "auto"),
                Ok(Resource::Fixed(v)) => prop_assert!(v >= 1),
                Err(_) => {}
            }
            prop_assert_eq!(Resource::from_str(&n.to_string()), Ok(Resource::Fixed(n)));
        }

        #[test]
        fn pull_policies_and_transports_accept_only_their_names(s in hostile()) {
            if let Ok(p) = PullPolicy::from_str(&s) {
                prop_assert!(["always", "if-not-present", "if_not_present", "never"].contains(&s.trim()), "{:?} -> {:?}", s, p);
            }
            if TransportKind::from_str(&s).is_ok() {
                prop_assert!(["ssh", "exec", "auto"].contains(&s.trim()));
            }
        }
    }
}
