//! `tart run`, `tart exec` and the guest init off Linux: the simulator's guests are sshd
//! processes in Linux namespaces, which other systems do not have. Everything else (clone,
//! pull, list, get, set, ...) works anywhere; these say why they cannot.

use crate::oci::SimVm;
use crate::{Fail, R};

fn unsupported(what: &str) -> Fail {
    Fail::Error(format!(
        "tart-sim: \"{what}\" needs Linux (its guests live in Linux namespaces)"
    ))
}

pub fn run(_args: &[String]) -> R<()> {
    Err(unsupported("tart run"))
}

pub fn guest_init(_args: &[String]) -> R<()> {
    Err(unsupported("__guest-init"))
}

pub fn exec_in_guest(_init: i32, _sim: &SimVm, _cmd: &[String], _interactive: bool) -> R<()> {
    Err(unsupported("tart exec"))
}
