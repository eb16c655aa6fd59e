//! The driver's state directory: owned by this user and private, and short enough for the
//! SSH control sockets it will hold.

use super::report::Check;
use crate::host::state_dir;
use crate::settings::Settings;

pub(super) fn check_state_dir(settings: &Settings) -> Check {
    const NAME: &str = "state dir";
    let dir = &settings.state_dir;
    // Exactly the checks every stage makes before it uses the directory.
    match state_dir::inspect(dir) {
        Ok(state_dir::Inspection::Fine { mode }) => Check::pass(
            NAME,
            format!("{}, mode {mode:o}, owned by this user", dir.display()),
        ),
        Ok(state_dir::Inspection::WillBeCreated) => Check::pass(
            NAME,
            format!(
                "{} does not exist yet; prepare creates it (mode 0700)",
                dir.display()
            ),
        ),
        Err(refusal) => Check::fail(
            NAME,
            format!("{}; every stage refuses it", refusal.problem),
            refusal.fix,
        ),
    }
}

/// The longest control-socket path a job can produce, as ssh binds it (with its temporary
/// suffix), against `sun_path`: 104 bytes on macOS, 108 on Linux (including the NUL).
pub(super) fn check_socket_path(settings: &Settings) -> Check {
    const NAME: &str = "SSH control socket path";
    let len = state_dir::longest_socket_path(&settings.state_dir);
    let max = state_dir::SOCKET_PATH_MAX;
    if len <= max {
        Check::pass(
            NAME,
            format!("the longest is {len} bytes (at most {max} on this OS)"),
        )
    } else {
        Check::fail(
            NAME,
            format!("the longest under {} is {len} bytes, over the {max} this OS allows: ssh cannot create it and prepare fails", settings.state_dir.display()),
            format!(
                "choose a --state-dir at least {} bytes shorter (the default {} fits)",
                len - max,
                state_dir::default_path().display()
            ),
        )
    }
}
