//! Spawning one driver process the way gitlab-runner does: its own process group, stdin from
//! /dev/null, a cleared environment, both pipes read concurrently (arrival order kept), and the
//! SIGTERM -> graceful_kill_timeout -> SIGKILL -> force_kill_timeout termination sequence.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why the harness terminated a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// A deadline (job timeout, `*_exec_timeout`) expired.
    Timeout,
    /// `Job::cancel_after`.
    Cancel,
    /// `Job::abort_after`.
    Abort,
}

pub(crate) struct Spec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
}

pub(crate) struct Control {
    /// Absolute deadline after which the process is terminated (`Termination::Timeout`).
    pub deadline: Option<Instant>,
    /// Relative to spawn: terminate for cancel/abort after this delay.
    pub trigger_after: Option<(Duration, Termination)>,
    pub graceful: Duration,
    pub force: Duration,
    /// For aborts: how long the runner waits for the stage before moving on.
    pub abort_wait: Duration,
    /// How long to keep reading pipes after the leader exited.
    pub drain: Duration,
}

#[derive(Debug)]
pub(crate) struct ProcResult {
    pub pid: Option<u32>,
    pub spawn_error: Option<String>,
    pub status: Option<ExitStatus>,
    pub terminated: Option<Termination>,
    pub sigkilled: bool,
    /// The process did not exit in time even after SIGKILL (or the abort wait expired); the
    /// harness stopped waiting (a background thread keeps reaping it).
    pub gave_up: bool,
    /// Some process still held stdout/stderr open after the leader exited.
    pub pipes_held_open: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a negative pid (the process group).
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

pub(crate) fn run(
    spec: &Spec<'_>,
    ctl: &Control,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> ProcResult {
    let start = Instant::now();
    let mut cmd = Command::new(spec.program);
    cmd.args(spec.args)
        .current_dir(spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut result = ProcResult {
        pid: None,
        spawn_error: None,
        status: None,
        terminated: None,
        sigkilled: false,
        gave_up: false,
        pipes_held_open: false,
        stdout: Vec::new(),
        stderr: Vec::new(),
        duration: Duration::ZERO,
    };
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.spawn_error = Some(format!("{}: {e}", spec.program.display()));
            result.duration = start.elapsed();
            return result;
        }
    };
    let pid = child.id();
    result.pid = Some(pid);

    let (tx, rx) = mpsc::channel::<(Stream, Option<Vec<u8>>)>();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((stream, Some(buf[..n].to_vec()))).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send((stream, None));
        });
    }
    drop(tx);

    let mut open = 2;
    let mut handle =
        |res: &mut ProcResult, s: Stream, data: Option<Vec<u8>>, open: &mut i32| match data {
            Some(d) => {
                on_output(s, &d);
                match s {
                    Stream::Stdout => res.stdout.extend_from_slice(&d),
                    Stream::Stderr => res.stderr.extend_from_slice(&d),
                }
            }
            None => *open -= 1,
        };

    let trigger_at = ctl.trigger_after.map(|(d, t)| (start + d, t));
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent: Option<Instant> = None;
    loop {
        if open > 0 {
            if let Ok((s, d)) = rx.recv_timeout(Duration::from_millis(10)) {
                handle(&mut result, s, d, &mut open);
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        match child.try_wait() {
            Ok(Some(st)) => {
                result.status = Some(st);
                break;
            }
            Ok(None) => {}
            Err(_) => {}
        }
        let now = Instant::now();
        match term_sent {
            None => {
                let why = if trigger_at.is_some_and(|(t, _)| now >= t) {
                    trigger_at.map(|(_, k)| k)
                } else if ctl.deadline.is_some_and(|d| now >= d) {
                    Some(Termination::Timeout)
                } else {
                    None
                };
                if let Some(why) = why {
                    result.terminated = Some(why);
                    signal_group(pid, libc::SIGTERM);
                    term_sent = Some(now);
                }
            }
            Some(t0) => {
                if result.terminated == Some(Termination::Abort) && now >= t0 + ctl.abort_wait {
                    result.gave_up = true;
                    break;
                }
                match kill_sent {
                    None if now >= t0 + ctl.graceful => {
                        signal_group(pid, libc::SIGKILL);
                        result.sigkilled = true;
                        kill_sent = Some(now);
                    }
                    Some(k0) if now >= k0 + ctl.force => {
                        result.gave_up = true;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }

    if result.gave_up {
        // Keep the termination sequence going in the background and reap the process.
        let graceful_end = term_sent.map(|t| t + ctl.graceful);
        let killed = result.sigkilled;
        std::thread::spawn(move || {
            if !killed {
                if let Some(end) = graceful_end {
                    loop {
                        if let Ok(Some(_)) = child.try_wait() {
                            return;
                        }
                        if Instant::now() >= end {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    signal_group(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
        });
    } else {
        // Drain what is still in the pipes.
        let drain_end = Instant::now() + ctl.drain;
        while open > 0 {
            let left = drain_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                result.pipes_held_open = true;
                break;
            }
            match rx.recv_timeout(left) {
                Ok((s, d)) => handle(&mut result, s, d, &mut open),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    result.pipes_held_open = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    // Anything that arrived meanwhile.
    while let Ok((s, d)) = rx.try_recv() {
        handle(&mut result, s, d, &mut open);
    }
    result.duration = start.elapsed();
    result
}

/// Exit code as Go reports it: the code, or -1 for death by a signal.
pub(crate) fn exit_code(st: &ExitStatus) -> i32 {
    st.code().unwrap_or(-1)
}

/// Go's `ExitError` text: `exit status N` or `signal: killed`.
pub(crate) fn describe(st: &ExitStatus) -> String {
    if let Some(c) = st.code() {
        return format!("exit status {c}");
    }
    let sig = st.signal().unwrap_or(0);
    let name = match sig {
        libc::SIGTERM => "terminated",
        libc::SIGKILL => "killed",
        libc::SIGINT => "interrupt",
        libc::SIGHUP => "hangup",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGABRT => "aborted",
        libc::SIGPIPE => "broken pipe",
        libc::SIGQUIT => "quit",
        _ => return format!("signal: {sig}"),
    };
    format!("signal: {name}")
}
