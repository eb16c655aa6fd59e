//! The guest user's login environment, for the job's scripts and for guest setup.
//!
//! A macOS user logs in with zsh, which reads `/etc/zprofile` (path_helper) and
//! `~/.zprofile`, where Homebrew's installer puts `brew shellenv`; `bash -l` reads only
//! `~/.profile`, and sshd's own PATH has no Homebrew. So the user's own login shell is
//! started as a login shell, and then replaced (`exec`) by the shell that runs the script,
//! which inherits that environment. Nothing runs after the script in the login shell: a
//! login shell that reaches its end would run `~/.bash_logout` or `~/.zlogout`, and with
//! the script's `errexit` on, its status could replace the script's.
//!
//! The commands here are read by the user's shell (zsh, bash or sh): POSIX syntax only,
//! and only BSD-compatible tools (macOS guests have bash 3.2 and BSD userland).

use crate::guest::quote;

/// Sets `s` to the guest user's login shell: `$SHELL` where the session has it (sshd sets
/// it), else the directory's record (`dscl` on macOS, `getent` on Linux), else `/bin/sh`.
const FIND_LOGIN_SHELL: &str = concat!(
    "s=${SHELL:-}; ",
    "[ -x \"$s\" ] || s=$(dscl . -read \"/Users/$(id -un)\" UserShell 2>/dev/null | sed 's/^UserShell: *//'); ",
    "[ -x \"$s\" ] || s=$(getent passwd \"$(id -un)\" 2>/dev/null | cut -d: -f7); ",
    "[ -x \"$s\" ] || s=/bin/sh; "
);

/// A command line that loads the user's login environment and then runs `then` (sh syntax)
/// in place of the login shell.
pub fn in_login_env(then: &str) -> String {
    format!("{FIND_LOGIN_SHELL}exec \"$s\" -l -c {}", quote(then))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sh(command: &str, env: &[(&str, &str)]) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .env_clear()
            .envs(env.iter().copied())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_login_shell_comes_from_shell_when_the_session_names_it() {
        let command = in_login_env("echo \"login=$0\"");
        assert_eq!(run_sh(&command, &[("SHELL", "/bin/sh")]), "login=/bin/sh\n");
    }

    #[test]
    #[cfg_attr(
        not(feature = "e2e"),
        ignore = "needs a user with a login shell; build users (Nix's nixbld, nobody) have none"
    )]
    fn without_shell_the_users_record_names_the_login_shell() {
        // No SHELL (as in a launchd agent): the account database answers.
        let command = in_login_env("echo \"login=$0\"");
        let out = run_sh(&command, &[]);
        assert!(out.starts_with("login=/"), "{out}");
    }

    #[test]
    fn quotes_in_the_command_survive() {
        let command = in_login_env("printf '%s\\n' 'it'\"'\"'s'");
        assert_eq!(run_sh(&command, &[("SHELL", "/bin/sh")]), "it's\n");
    }
}
