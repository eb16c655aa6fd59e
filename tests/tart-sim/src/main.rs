//! `tart`: a Tart 2.35 simulator for Linux test beds. See README.md.
//!
//! It compiles everywhere (so that the workspace builds on a Mac), but boots guests only on
//! Linux; elsewhere the helpers that only `tart run` uses are unused.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

mod cli;
mod cmds;
mod macos_guest;
mod netfault;
mod oci;
#[cfg(target_os = "linux")]
mod run;
#[cfg(not(target_os = "linux"))]
#[path = "run_unsupported.rs"]
mod run;
mod security;
// Only `tart run` (Linux) uses it.
#[cfg(target_os = "linux")]
mod softnet;
mod util;
mod vz;

use std::io::Write;

pub const VERSION: &str = "2.35.0";

/// The failure kinds of the spec (§1.2), plus help output and plain exits.
#[derive(Debug)]
pub enum Fail {
    /// Kind A: bare message, exit code given (2 or 1).
    Bare(String, i32),
    /// Kind B: `Error: <message>`, exit 1.
    Error(String),
    /// Kind C: usage error, exit 64.
    Usage {
        msg: String,
        help: Option<String>,
        usage: String,
        cmd: String,
    },
    /// `--help` / `--version` output on stdout, exit 0.
    Help(String),
    /// Exit silently with this code.
    Exit(i32),
}

pub type R<T> = Result<T, Fail>;

const TOP_USAGE: &str = "tart <subcommand>";

fn top_help() -> String {
    "OVERVIEW: Run macOS and Linux VMs (Tart 2.35 simulator)\n\nUSAGE: tart <subcommand>\n\nOPTIONS:\n  --version               Show the version.\n  -h, --help              Show help information.\n\nSUBCOMMANDS:\n  create, clone, run, set, get, list, login, logout, ip, exec, pull, push, import, export, prune, rename, stop, delete\n\n  See 'tart help <subcommand>' for detailed help.\n".into()
}

fn main() {
    // Tart forces line-buffered stdout; Rust's stdout is line-buffered already.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let called = std::env::args().next().unwrap_or_default();
    if std::path::Path::new(&called).file_name() == Some(std::ffi::OsStr::new("security")) {
        let code = match security::main(&args) {
            Ok(()) => 0,
            Err(f) => report(f),
        };
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    let internal = args.first().is_some_and(|a| a.starts_with("__"));
    if !internal {
        log_invocation("start", &args);
    }
    let code = match dispatch(&args) {
        Ok(()) => 0,
        Err(f) => report(f),
    };
    if !internal {
        log_invocation(&format!("end:{code}"), &args);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Test instrumentation, not Tart behaviour: every command appends a line to
/// `$TART_SIM_HOST/invocations.log` when it starts and when it ends (`<unix ms> <pid>
/// start|end:<code> <args>`), so tests can tell what a driver asked Tart to do, and when.
fn log_invocation(event: &str, args: &[String]) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let line = format!("{ms} {} {event} {}\n", std::process::id(), args.join(" "));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(util::sim_host().join("invocations.log"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

pub fn report(f: Fail) -> i32 {
    let mut e = std::io::stderr();
    match f {
        Fail::Bare(m, c) => {
            let _ = writeln!(e, "{m}");
            c
        }
        Fail::Error(m) => {
            let _ = writeln!(e, "Error: {m}");
            1
        }
        Fail::Usage {
            msg,
            help,
            usage,
            cmd,
        } => {
            let _ = writeln!(e, "Error: {msg}");
            if let Some(h) = help {
                let _ = writeln!(e, "Help:  {h}");
            }
            let _ = writeln!(e, "Usage: {usage}");
            if cmd.is_empty() {
                let _ = writeln!(e, "  See 'tart --help' for more information.");
            } else {
                let _ = writeln!(e, "  See 'tart {cmd} --help' for more information.");
            }
            64
        }
        Fail::Help(t) => {
            print!("{t}");
            0
        }
        Fail::Exit(c) => c,
    }
}

fn dispatch(args: &[String]) -> R<()> {
    let Some(sub) = args.first() else {
        return Err(Fail::Help(top_help()));
    };
    let rest = &args[1..];
    match sub.as_str() {
        "--version" => {
            println!("{VERSION}");
            Ok(())
        }
        "-h" | "--help" | "help" => Err(Fail::Help(top_help())),
        "clone" => cmds::clone(rest),
        "pull" => cmds::pull(rest),
        "login" => cmds::login(rest),
        "logout" => cmds::logout(rest),
        "list" => cmds::list(rest),
        "get" => cmds::get(rest),
        "set" => cmds::set(rest),
        "stop" => cmds::stop(rest),
        "delete" => cmds::delete(rest),
        "prune" => cmds::prune(rest),
        "ip" => cmds::ip(rest),
        "exec" => cmds::exec(rest),
        "fqn" => cmds::fqn(rest),
        "rename" => cmds::rename(rest),
        "run" => run::run(rest),
        "__guest-init" => run::guest_init(rest),
        "create" | "push" | "import" | "export" | "suspend" => Err(Fail::Error(format!(
            "tart-sim: \"tart {sub}\" is not simulated"
        ))),
        other => {
            let msg = if other.starts_with('-') {
                format!("Unknown option '{other}'")
            } else {
                format!("Unexpected argument '{other}'")
            };
            Err(Fail::Usage {
                msg,
                help: None,
                usage: TOP_USAGE.into(),
                cmd: String::new(),
            })
        }
    }
}
