//! `orchard-proxy VM PORT` (hidden): ssh's `ProxyCommand` for an Orchard VM. It bridges its
//! stdin and stdout to the VM's port through the controller's port-forward WebSocket,
//! retrying 408/500/503 and network errors until the bound (the boot timeout, `--timeout`,
//! unless `--retry-for` says otherwise), since `running` does not mean sshd answers yet.

use std::time::Duration;

use anyhow::Context;

use super::client::Client;
use super::portforward::{bridge, open_within};
use crate::cli::Options;
use crate::failure::StageResult;
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
