//! Whether this host can open a TCP connection to a guest, and what an unreachable guest
//! means. On macOS 15+ a process without the Local Network permission cannot connect to
//! VMs at all: the VM has an IP, but every connection fails with "No route to host"
//! (EHOSTUNREACH) until a person clicks Allow once, which never happens on a headless Mac.
//! Tart's guest agent (`tart exec`) goes over a socket on the host and is not affected.

use std::time::Duration;

/// What a connection attempt to port 22 of a guest found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Something accepts connections.
    Open,
    /// The guest answers, but nothing listens (yet).
    Refused,
    /// "No route to host": on macOS 15+, Local Network privacy (or a guest that is gone).
    NoRoute,
    /// Anything else (a timeout, an unreachable network), worth another try.
    Other(String),
}

pub const LOCAL_NETWORK_CAUSE: &str = "on macOS 15 and later this is Local Network privacy: gitlab-runner (and the driver it starts) was never allowed to reach devices on the local network, and on a Mac where nobody is logged in at the screen nobody can click Allow";

pub const LOCAL_NETWORK_FIX: &str = "once, at the Mac's screen while a job runs, click Allow when macOS asks whether gitlab-runner may find devices on the local network (System Settings > Privacy & Security > Local Network); or exempt the VM network for every process: `sudo defaults write com.apple.network.local-network AllowedEthernetLocalNetworkAddresses -array 192.168.64.0/24` (and the same for AllowedWiFiLocalNetworkAddresses), then reboot; or use `--transport auto`/`exec` with an image that has Tart's guest agent, which needs no network permission";

/// Tries one TCP connection to `ip:22`.
pub async fn probe(ip: &str, limit: Duration) -> Reach {
    let addr = format!("{ip}:22");
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Reach::Open,
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Reach::NoRoute,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Ok(Err(e)) => Reach::Other(e.to_string()),
        Err(_) => Reach::Other(format!("no answer within {}s", limit.as_secs())),
    }
}
