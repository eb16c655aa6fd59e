//! `orchard-proxy VM PORT` (hidden): ssh's `ProxyCommand` for an Orchard VM. It bridges its
//! stdin and stdout to the VM's port through the controller's port-forward WebSocket,
//! retrying 408/500/503 and network errors until the bound (the boot timeout, `--timeout`,
//! unless `--retry-for` says otherwise), since `running` does not mean sshd answers yet.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::client::Client;
use super::portforward::{bridge, open_within};
use super::settings::OrchardSettings;
use super::trust::Trust;
use crate::failure::StageResult;
use crate::settings::Options;
use crate::settings::Settings;

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The Orchard VM's name
    pub vm: String,
    /// The VM's TCP port (22 for SSH)
    pub port: u16,
    /// Seconds to keep retrying before giving up [default: --timeout, the boot timeout]
    #[arg(long, value_name = "SECONDS")]
    pub retry_for: Option<u64>,
    #[command(flatten)]
    pub options: Options,
}

pub fn proxy(args: &ProxyArgs) -> StageResult {
    let settings = Settings::load(&args.options)?;
    let orchard = settings.orchard.as_ref().context(
        "no Orchard controller configured: give --orchard-url, --orchard-service-account and --orchard-token-file",
    )?;
    let client = Client::new(orchard)?;
    let bound = Duration::from_secs(args.retry_for.unwrap_or(settings.timeout_secs));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(async {
        let ws = open_within(&client, &args.vm, args.port, bound).await?;
        bridge(ws, tokio::io::stdin(), tokio::io::stdout()).await
    });
    // tokio's stdin reader thread may still be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    Ok(result?)
}

/// The `ProxyCommand` for ssh to reach `vm`'s sshd: this driver's hidden subcommand with what
/// it needs to find and trust the controller, all of it paths and names, no secret (ssh's
/// argv is visible to every user of the host). `--config /dev/null`: nothing else matters to
/// it, so no other file can break it. Each word is quoted for the shell ssh runs it with,
/// and `%` doubled, since ssh expands `%` tokens in it.
pub fn command(exe: &Path, orchard: &OrchardSettings, vm: &str, retry_for: Duration) -> String {
    let mut words = vec![
        exe.display().to_string(),
        "orchard-proxy".into(),
        "--config".into(),
        "/dev/null".into(),
        "--orchard-url".into(),
        orchard.url.to_string(),
        "--orchard-service-account".into(),
        orchard.service_account.clone(),
        "--orchard-token-file".into(),
        orchard.token_file.display().to_string(),
    ];
    match &orchard.trust {
        Trust::SystemRoots => {}
        Trust::CaFile(path) => {
            words.extend(["--orchard-ca-file".into(), path.display().to_string()]);
        }
        Trust::Fingerprint(bytes) => words.extend([
            "--orchard-ca-fingerprint".into(),
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ]),
    }
    words.extend([
        "--retry-for".into(),
        retry_for.as_secs().max(1).to_string(),
        vm.to_string(),
        "22".into(),
    ]);
    words
        .iter()
        .map(|w| crate::guest::quote(w).replace('%', "%%"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_command_names_only_paths_and_quotes_every_word_for_ssh() {
        let orchard = OrchardSettings::example(
            "https://orchard.example.com:6120/o",
            "/etc/orchard/it's 100% secret-file".into(),
            Trust::Fingerprint([0xab; 32]),
        );
        let cmd = command(
            Path::new("/opt/driver"),
            &orchard,
            "gl-1-2-3",
            Duration::from_secs(20),
        );
        assert!(
            cmd.starts_with("'/opt/driver' 'orchard-proxy' '--config' '/dev/null'"),
            "{cmd}"
        );
        assert!(
            cmd.contains(r"'/etc/orchard/it'\''s 100%% secret-file'"),
            "{cmd}"
        );
        assert!(cmd.contains(&format!("'--orchard-ca-fingerprint' '{}'", "ab".repeat(32))));
        assert!(cmd.ends_with("'--retry-for' '20' 'gl-1-2-3' '22'"), "{cmd}");
    }
}
