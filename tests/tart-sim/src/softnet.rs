//! Softnet, as far as it matters to a driver: `tart run --net-softnet` (and the flags that
//! imply it) needs the `softnet` binary on PATH and root privileges for it, and a guest
//! behind it reaches none of the other guests on the host's NAT network.
//!
//! Privileges, as Tart and Softnet check them: `softnet` (symlinks resolved) owned by root
//! with the setuid bit, or passwordless sudo for it (simulated by the file
//! `$TART_SIM_HOST/softnet-sudoers`, standing for a sudoers rule). Without either, Softnet
//! exits at once with its own message and Tart stops the VM (spec 7.4).
//!
//! Isolation: the guest gets a network namespace of its own with only loopback up, so an
//! address of another guest leads nowhere. `tart run` accepts connections for the guest on
//! its address in the host's namespace and relays them into the guest's, as the host can
//! still reach a Softnet guest. Stricter than a real Mac: a Softnet guest here reaches
//! nothing outside itself (no internet, no gateway), and `--net-softnet-allow` opens
//! nothing.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::util::sim_host;
use crate::Fail;

/// Whether Softnet could start with root privileges; otherwise Softnet's and Tart's words.
pub fn check_privileges(softnet: &Path) -> Result<(), Fail> {
    let real = softnet
        .canonicalize()
        .unwrap_or_else(|_| softnet.to_path_buf());
    let setuid_root = std::fs::metadata(&real)
        .map(|m| m.uid() == 0 && m.mode() & 0o4000 != 0)
        .unwrap_or(false);
    if setuid_root || sim_host().join("softnet-sudoers").exists() {
        return Ok(());
    }
    let _ = writeln!(
        std::io::stderr(),
        "root privileges are required to run and passwordless sudo was not available"
    );
    Err(Fail::Error(
        "RuntimeFailed(why: \"Softnet process terminated prematurely\")".into(),
    ))
}

/// Brings up loopback in the guest's fresh network namespace (called by the guest's init).
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: a plain socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; the name "lo" fits.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on our socket with a valid ifreq.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(format!("bringing up lo: {err}"));
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the guest's network namespace.
fn in_guest<T: Send + 'static>(
    init: i32,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let ns = File::open(format!("/proc/{init}/ns/net"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only (network namespaces are per thread).
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("guest network thread panicked")))
}

/// The host's side of a Softnet guest's network, run by a helper thread of `tart run`.
///
/// `tart run` moves into a new PID namespace before it starts the guest, and a process in
/// that state cannot create threads any more (the kernel refuses threads whose PID
/// namespace differs from their group's). The helper is started before, keeps the host's
/// namespaces, and creates the threads the relay needs.
pub struct Network {
    requests: std::sync::mpsc::Sender<Request>,
}

enum Request {
    /// The guest is up: relay connections to `addr` into its network.
    Guest(
        i32,
        SocketAddr,
        std::sync::mpsc::Sender<std::io::Result<()>>,
    ),
    /// Does the guest's `addr` accept connections (asked from inside)?
    Probe(SocketAddr, std::sync::mpsc::Sender<bool>),
}

impl Network {
    /// Starts the helper; call before leaving the host's PID namespace.
    pub fn start() -> Network {
        let (requests, inbox) = std::sync::mpsc::channel::<Request>();
        std::thread::spawn(move || {
            let mut init = 0;
            for request in inbox {
                match request {
                    Request::Guest(pid, addr, reply) => {
                        init = pid;
                        let _ = reply.send(relay(init, addr));
                    }
                    Request::Probe(addr, reply) => {
                        let open = in_guest(init, move || {
                            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(drop)
                        });
                        let _ = reply.send(open.is_ok());
                    }
                }
            }
        });
        Network { requests }
    }

    /// Relays connections to the guest's address, from now on.
    pub fn serve(&self, init: i32, addr: SocketAddr) -> std::io::Result<()> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests
            .send(Request::Guest(init, addr, reply))
            .map_err(|_| std::io::Error::other("the Softnet helper is gone"))?;
        answer
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the Softnet helper is gone")))
    }

    /// Whether the guest's sshd accepts connections, asked from inside the guest's network.
    pub fn guest_port_open(&self, addr: SocketAddr) -> bool {
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests.send(Request::Probe(addr, reply)).is_ok() && answer.recv().unwrap_or(false)
    }
}

/// Accepts connections to the guest's address in the host's network and relays each into
/// the guest's own, for as long as this `tart run` lives.
fn relay(init: i32, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(guest) = in_guest(init, move || TcpStream::connect(addr)) else {
                    return;
                };
                pipe_both(client, guest);
            });
        }
    });
    Ok(())
}

fn pipe_both(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let forth = std::thread::spawn(move || copy_then_shutdown(a, b2));
    copy_then_shutdown(b, a2);
    let _ = forth.join();
}

fn copy_then_shutdown(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
