//! What the two transports share about a stage: how its script is run in the guest (the
//! remote wrapper), how it is cancelled, and how it ended.

/// How a remote command ended.
#[derive(Debug)]
pub enum RemoteExit {
    /// The command exited with this code.
    Code(i32),
    /// The VM or the connection to it went away: not the script's fault.
    Lost(String),
    /// The VM runs, but the way to it failed mid-command; the script's outcome is unknown.
    Broken(String),
}

/// The remote side of a stage: records the shell's PID (the leader of its process group
/// under sshd) so that a cancel can kill the whole group, loads the guest user's login
/// environment through their own login shell (see `crate::guest::login`), then becomes the shell
/// that reads the script on stdin. Every step `exec`s, so the recorded PID stays the
/// script shell's.
pub fn stage_wrapper(stage: &Stage<'_>, pid_file: &str) -> String {
    let shell = stage.shell;
    let mut setup = String::new();
    for (key, value) in stage.env {
        // Values are validated where they are parsed (plain characters only).
        setup.push_str(&format!("export {key}={value}; "));
    }
    let then = format!(
        "{setup}PATH=\"$HOME/{}:$PATH\"; export PATH; exec {shell}",
        crate::guest::GUEST_TOOLS_DIR
    );
    format!(
        "echo $$ > {pid_file}; {}",
        crate::guest::login::in_login_env(&then)
    )
}

/// How a stage's script is run in the guest: which shell, with which extra environment.
pub struct Stage<'a> {
    pub shell: &'a str,
    pub env: &'a [(String, String)],
}

/// The command that stops a stage's remote processes: the group first, then the children of
/// the shell in case it was not a group leader (tart exec).
pub fn cancel_command(pid_file: &str, signal: &str) -> String {
    format!(
        "p=$(cat {pid_file} 2>/dev/null) || exit 0; kill -{signal} -- -$p 2>/dev/null; pkill -{signal} -P $p 2>/dev/null; kill -{signal} $p 2>/dev/null; exit 0"
    )
}

/// A guest path for this stage's PID file, unique per stage process.
pub fn pid_file_for_stage() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("/tmp/.tartdrv-{}-{nanos}.pid", std::process::id())
}
