//! The admin's options as flags: one set every stage (and doctor, gc, warm) accepts, so
//! that config.toml can give the same arguments, or one `--config` file, to all of them.
//! The command line flattens [`Options`] into each command; [`Settings`](super::Settings)
//! merges them with the file.

use std::path::PathBuf;

use clap::Args;

use crate::model::{PullPolicy, Resource, TransportKind};

/// Admin options. Accepted by every stage so that one set of arguments (or one `--config`
/// file) can be given to all of them in config.toml.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Admin options")]
pub struct Options {
    /// YAML file with any of these options (keys in snake_case, e.g. `pull_policy`).
    #[arg(long, env = "TART_DRIVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Path to the tart executable [default: tart]
    #[arg(short = 'x', long, value_name = "PATH")]
    pub tart_executable: Option<String>,

    /// Where the driver keeps per-job state, sockets and slot locks [default: ~/Library/Caches/tartdrv on macOS, ~/.local/state/tartdrv elsewhere]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// VMs this host runs at once, across all runners; must equal config.toml `concurrent` [default: 1]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,

    /// macOS guests this host may run at once (Apple allows 2) [default: 2]
    #[arg(long, value_name = "N")]
    pub macos_vm_limit: Option<u32>,

    /// CPUs per VM, or `auto` for the host's CPUs divided by --concurrency [default: the image's]
    #[arg(long, value_name = "N|auto")]
    pub cpu: Option<Resource>,

    /// Memory per VM in MiB, or `auto` for the host's memory (less 2 GiB) divided by --concurrency
    #[arg(long, value_name = "MIB|auto")]
    pub memory: Option<Resource>,

    /// Size VMs from the host's resources when --cpu/--memory are not given [default: on]
    #[arg(long, overrides_with = "no_auto_resources")]
    pub auto_resources: bool,

    /// Keep the image's CPU and memory when --cpu/--memory are not given
    #[arg(long, overrides_with = "auto_resources")]
    pub no_auto_resources: bool,

    /// VM display resolution, WIDTHxHEIGHT (job variable TART_EXECUTOR_DISPLAY)
    #[arg(long, value_name = "WxH")]
    pub display: Option<String>,

    /// Seconds allowed for the VM to boot and accept SSH (job variable TART_EXECUTOR_TIMEOUT may lower it) [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Host directory shared into each VM as its builds directory (one sub-directory per job)
    #[arg(long, value_name = "DIR")]
    pub builds_dir: Option<PathBuf>,

    /// Host directory shared into each VM as its cache directory (one sub-directory per project)
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Host directory to share into every VM, HOST:GUEST[:ro] (repeatable)
    #[arg(long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<String>,

    /// Refuse images matching this regular expression (repeatable)
    #[arg(short = 'e', long = "exclude-image-expr", value_name = "REGEX")]
    pub exclude_images: Vec<String>,

    /// Accept only images matching one of these regular expressions (repeatable) [default: any]
    #[arg(long = "allow-image-expr", value_name = "REGEX")]
    pub allow_images: Vec<String>,

    /// Image for jobs that have no `image:`
    #[arg(long, value_name = "IMAGE")]
    pub default_image: Option<String>,

    /// When to pull the image: always, if-not-present, never (job variable TART_PULL_POLICY) [default: if-not-present]
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<PullPolicy>,

    /// Pull policies a job may ask for with TART_PULL_POLICY (repeatable) [default: all]
    #[arg(long = "allowed-pull-policy", value_name = "POLICY")]
    pub allowed_pull_policies: Vec<PullPolicy>,

    /// How scripts reach the VM: ssh, exec (Tart guest agent), auto (job variable TART_TRANSPORT) [default: ssh]
    #[arg(long, value_name = "KIND")]
    pub transport: Option<TransportKind>,

    /// Shell that runs each script in the VM, as a login shell (job variable TART_EXECUTOR_SHELL) [default: bash]
    #[arg(long, value_name = "SHELL")]
    pub shell: Option<String>,

    /// SSH user in the VM (job variable TART_SSH_USERNAME) [default: admin]
    #[arg(long, value_name = "USER")]
    pub ssh_username: Option<String>,

    /// File holding the SSH password (job variable TART_SSH_PASSWORD) [default: password admin]
    #[arg(long, value_name = "FILE")]
    pub ssh_password_file: Option<PathBuf>,

    /// Private key for SSH into the VM
    #[arg(long, value_name = "FILE")]
    pub ssh_key_file: Option<PathBuf>,

    /// Make sure gitlab-runner is installed in the VM (needed for artifacts and cache)
    #[arg(long)]
    pub install_gitlab_runner: bool,

    /// Install gitlab-runner in the VM even if one is present
    #[arg(long)]
    pub force_install_gitlab_runner: bool,

    /// gitlab-runner version to install, e.g. 17.6.0 [default: latest]
    #[arg(long, value_name = "VERSION")]
    pub gitlab_runner_version: Option<String>,

    /// Isolate each VM's network with Softnet [default: on when --concurrency + --warm-pool > 1, more than one VM at once, and always with --backend orchard, whose workers run other runners' VMs too] (job variable TART_EXECUTOR_SOFTNET_ENABLED may only turn it on)
    #[arg(long, overrides_with = "no_softnet")]
    pub softnet: bool,

    /// Turn Softnet off even when VMs run side by side: each job's guest can then reach the others' VMs
    #[arg(long, overrides_with = "softnet")]
    pub no_softnet: bool,

    /// Cached images any job may clone without registry credentials, by regex (repeatable) [default: none; images pulled with credentials need the job's own]
    #[arg(long = "public-image", value_name = "REGEX")]
    pub public_images: Vec<String>,

    /// Let Tart use the runner user's registry logins (~/.docker/config.json, keychain, TART_REGISTRY_*) for jobs without credentials [default: off]
    #[arg(long)]
    pub host_registry_credentials: bool,

    /// Allow jobs to use local VM names as `image:` (not only OCI images)
    #[arg(long)]
    pub allow_local_images: bool,

    /// Accept only images matching one of these globs, `*` within a path segment, `**` across (repeatable; gitlab-tart-executor's --allow-image)
    #[arg(long = "allow-image", value_name = "GLOB")]
    pub allow_image_globs: Vec<String>,

    /// Guest path of the builds directory [default: /tmp/builds]
    #[arg(long, value_name = "PATH")]
    pub guest_builds_dir: Option<String>,

    /// Guest path of the cache directory [default: /tmp/cache]
    #[arg(long, value_name = "PATH")]
    pub guest_cache_dir: Option<String>,

    /// Job variables jobs may use, by setting name (repeatable, e.g. shell, pull_policy) [default: the original driver's set]
    #[arg(long = "job-override", value_name = "SETTING")]
    pub job_overrides: Vec<crate::model::Overridable>,

    /// CIDRs the VM may reach with Softnet, e.g. 10.0.0.0/8 (repeatable; implies --softnet)
    #[arg(long = "softnet-allow", value_name = "CIDR")]
    pub softnet_allow: Vec<String>,

    /// Bridge the VM onto this host interface (e.g. en0) instead of NAT
    #[arg(long, value_name = "INTERFACE")]
    pub bridged: Option<String>,

    /// Give every VM a new random MAC address (job variable TART_EXECUTOR_RANDOM_MAC)
    #[arg(long)]
    pub random_mac: bool,

    /// Nested virtualization for Linux guests (M3 or newer, macOS 15+)
    #[arg(long)]
    pub nested: bool,

    /// Options for the VM's root disk, e.g. `sync=none` (tart run --root-disk-opts)
    #[arg(long, value_name = "OPTS")]
    pub root_disk_opts: Option<String>,

    /// Time zone of the job's scripts, a name like Europe/Berlin or `auto` for the host's (job variable TART_EXECUTOR_TIMEZONE)
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,

    /// Pull over plain HTTP (a registry without TLS)
    #[arg(long)]
    pub insecure_pull: bool,

    /// Parallel layer downloads for pull and clone [default: Tart's, 4]
    #[arg(long, value_name = "N")]
    pub pull_concurrency: Option<u32>,

    /// Let Tart prune its image cache automatically when pulling and cloning [default: on]
    #[arg(long, overrides_with = "auto_prune")]
    pub no_auto_prune: bool,

    #[arg(long, hide = true, overrides_with = "no_auto_prune")]
    pub auto_prune: bool,

    /// Install gitlab-runner into the VM by copying this host's binary when the guest has the host's OS (no network, same version as the runner)
    #[arg(long)]
    pub copy_gitlab_runner: bool,

    #[command(flatten)]
    pub orchard: crate::orchard::settings::OrchardOptions,
    #[command(flatten)]
    pub warm: crate::settings::warm::WarmOptions,
    /// UNSAFE, for gitlab-runner older than 14.1 only (no JOB_RESPONSE_FILE): take the job's id, project and runner from its variables, which a job can set to reach another job's VM
    #[arg(long)]
    pub unsafe_job_identity_from_variables: bool,
}

/// An on/off setting: `--x` or `--no-x` (the last given wins), else the file, else `default`.
pub fn switch(on: bool, off: bool, file: Option<bool>, default: bool) -> bool {
    (on || off).then_some(on).or(file).unwrap_or(default)
}

/// Whether VMs use Softnet: the admin's `--softnet`/`--no-softnet` or the file's `softnet`,
/// on by default when the job's VM may have neighbours (`side_by_side`: more than one VM of
/// this runner at once on one Mac, or any Orchard worker, which runs other runners' VMs
/// too); any `--softnet-allow` range (which only Softnet can honour) turns it on.
pub fn softnet_wanted(
    o: &Options,
    file: Option<bool>,
    side_by_side: bool,
    allow: &[String],
) -> bool {
    switch(o.softnet, o.no_softnet, file, side_by_side) || !allow.is_empty()
}
