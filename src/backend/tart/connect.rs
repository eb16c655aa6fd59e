//! The end of a local VM's boot wait: from a running `tart run` to the job's open connection,
//! over the transport the job asked for.
//!
//! With `auto`, Tart's guest agent is preferred when it answers; SSH serves images without
//! it. When SSH cannot even connect because macOS's Local Network privacy blocks this
//! process ("No route to host" to a VM that has an IP), the job log says so with the fix,
//! and `auto` falls back to the agent as soon as it answers.

use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::backend::tart::lifecycle;
use crate::failure::Failure;
use crate::guest::identity::{self, Identity};
use crate::guest::transport::exec::ExecTransport;
use crate::guest::transport::reach::{self, Reach};
use crate::guest::transport::ssh::{self, MasterError, Target};
use crate::host::tart::Tart;
use crate::host::vm::{Connection, VmState};
use crate::job::request::Request;
use crate::model::TransportKind;

/// How long "No route to host" must last before it is taken for Local Network privacy
/// rather than a guest whose network is still coming up.
const NO_ROUTE_GRACE: Duration = Duration::from_secs(3);

/// Waits for the VM to boot and opens the job's connection with the chosen transport.
pub async fn connect(
    tart: &Tart,
    state: &VmState,
    request: &Request,
    identity: &Identity,
    os: &str,
    resolver: &str,
    deadline: Instant,
) -> Result<Connection, Failure> {
    let exec = ExecTransport::new(tart.clone(), state.name.clone());
    let exec_connection = || Connection {
        transport: TransportKind::Exec,
        os: os.to_string(),
        shell: request.shell.clone(),
        ip: None,
        user: None,
        env: request.guest_env(),
    };
    if request.transport == TransportKind::Exec {
        loop {
            if let Some(ending) = state.run_ending() {
                return Err(anyhow!("the VM stopped while booting: {ending}").into());
            }
            if exec.agent_answers(Duration::from_secs(10)).await {
                return Ok(exec_connection());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!("Tart's guest agent did not answer within the boot timeout: does the image have the agent? Use TART_TRANSPORT=ssh for images without it").into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let ip = lifecycle::wait_for_ip(tart, state, resolver, deadline).await?;
    let auto = request.transport == TransportKind::Auto;
    if auto && exec.agent_answers(Duration::from_secs(5)).await {
        return Ok(exec_connection());
    }
    let target = Target::Ip {
        host: ip.clone(),
        port: 22,
    };
    loop {
        if let Some(ending) = state.run_ending() {
            return Err(anyhow!("the VM stopped while booting: {ending}").into());
        }
        match wait_for_ssh_port(&ip, deadline, auto.then_some(&exec)).await {
            PortWait::Open => {}
            PortWait::AgentInstead => {
                eprintln!("Using tart exec (Tart's guest agent) instead of SSH: it needs no Local Network permission");
                return Ok(exec_connection());
            }
            PortWait::NoRoute => {
                return Err(anyhow!(
                    "SSH at {ip}:22 failed with \"No route to host\" until the boot timeout, although the VM has that IP: {}. Fix: {}",
                    reach::LOCAL_NETWORK_CAUSE,
                    reach::LOCAL_NETWORK_FIX
                )
                .into())
            }
            PortWait::TimedOut => {
                return Err(anyhow!("SSH at {ip}:22 did not answer within the boot timeout: is Remote Login enabled in the image? On macOS 15+, has the runner the Local Network permission?").into())
            }
        }
        match ssh::start_master(state, &target, &request.user, &request.auth).await {
            Ok(()) => break,
            Err(MasterError::Broken(reason)) => return Err(anyhow!(reason).into()),
            Err(MasterError::Refused(reason)) => {
                return Err(anyhow!(ssh::describe_refusal(&request.user, &ip, &reason)).into());
            }
            Err(MasterError::NotYet(reason)) => {
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "SSH login to {ip} did not succeed within the boot timeout: {reason}"
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // The lease may be another VM's: nothing of the job goes out before this proof. (Over
    // `tart exec`, Tart itself reaches this VM through its own control socket.)
    identity::prove(identity, state, os, &ip).await?;
    Ok(Connection {
        transport: TransportKind::Ssh,
        os: os.to_string(),
        shell: request.shell.clone(),
        ip: Some(ip),
        user: Some(request.user.clone()),
        env: request.guest_env(),
    })
}

enum PortWait {
    Open,
    /// Local Network privacy blocks SSH, and the guest agent answers.
    AgentInstead,
    /// "No route to host" was the last word at the deadline.
    NoRoute,
    TimedOut,
}

/// Waits until something accepts TCP connections on `ip:22`, polling every 100 ms. Once
/// "No route to host" persists, says in the job log what it means, and, given the agent
/// (`auto`), switches to it as soon as it answers.
async fn wait_for_ssh_port(ip: &str, deadline: Instant, agent: Option<&ExecTransport>) -> PortWait {
    let mut no_route_since: Option<Instant> = None;
    let mut told = false;
    let mut last = Reach::Other(String::new());
    while Instant::now() < deadline {
        last = reach::probe(ip, Duration::from_secs(1)).await;
        match last {
            Reach::Open => return PortWait::Open,
            Reach::NoRoute => {
                let since = *no_route_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= NO_ROUTE_GRACE {
                    if !told {
                        told = true;
                        eprintln!(
                            "WARNING: the VM has IP {ip}, but connecting to it fails with \"No route to host\": {}.\n  Fix: {}",
                            reach::LOCAL_NETWORK_CAUSE,
                            reach::LOCAL_NETWORK_FIX
                        );
                    }
                    if let Some(agent) = agent {
                        if agent.agent_answers(Duration::from_secs(5)).await {
                            return PortWait::AgentInstead;
                        }
                    }
                }
            }
            _ => no_route_since = None,
        }
        // A refused connect costs the guest next to nothing; a shorter pause starts the
        // login sooner after sshd listens.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if last == Reach::NoRoute {
        PortWait::NoRoute
    } else {
        PortWait::TimedOut
    }
}

pub fn transport_name(conn: &Connection) -> String {
    match conn.transport {
        TransportKind::Exec => "tart exec (guest agent)".into(),
        _ => format!("SSH at {}", conn.ip.as_deref().unwrap_or("?")),
    }
}
