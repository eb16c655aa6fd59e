//! `orchard-proxy VM PORT` (hidden): ssh's `ProxyCommand` for an Orchard VM
//! (`orchard::proxy::command` writes it). It bridges its stdin and stdout to the VM's port
//! through the controller's port-forward WebSocket, retrying 408/500/503 and network errors
//! until the bound (the boot timeout, `--timeout`, unless `--retry-for` says otherwise),
//! since `running` does not mean sshd answers yet.

use std::time::Duration;

use anyhow::Context;

use crate::failure::StageResult;
use crate::orchard::client::Client;
use crate::orchard::portforward::{bridge, open_within};
use crate::settings::{Options, Settings};

/// Bridges stdin and stdout to `port` of the Orchard VM `vm`, retrying for `retry_for`
/// seconds (the boot timeout when None).
pub fn orchard_proxy(
    options: &Options,
    vm: &str,
    port: u16,
    retry_for: Option<u64>,
) -> StageResult {
    let settings = Settings::load(options)?;
    let orchard = settings.orchard.as_ref().context(
        "no Orchard controller configured: give --orchard-url, --orchard-service-account and --orchard-token-file",
    )?;
    let client = Client::new(orchard)?;
    let bound = Duration::from_secs(retry_for.unwrap_or(settings.timeout_secs));
    let runtime = crate::rt::runtime();
    let result = runtime.block_on(async {
        let ws = open_within(&client, vm, port, bound).await?;
        bridge(ws, tokio::io::stdin(), tokio::io::stdout()).await
    });
    // tokio's stdin reader thread may still be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    Ok(result?)
}
