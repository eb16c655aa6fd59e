//! Generation of the bash scripts handed to `run_exec` (spec §4.3).

/// Quote `s` as a bash ANSI-C string `$'...'`: `\\`, `\'`, `\n`, `\t`, `\r` and `\xNN` for
/// other control bytes. Non-ASCII bytes pass through unchanged.
pub fn ansi_c_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A shell word for `value`: unquoted when it only holds safe characters, else `$'...'`.
pub fn shell_word(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(&b));
    if safe {
        value.to_string()
    } else {
        ansi_c_quote(value)
    }
}

/// A path inside double quotes. Relative paths are made absolute against `$PWD` at run time,
/// as the runner's bash shell does for temp paths.
pub fn dq_path(path: &str) -> String {
    let mut s = String::from("\"");
    if !path.starts_with('/') {
        s.push_str("$PWD/");
    }
    for c in path.chars() {
        if matches!(c, '"' | '$' | '`' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Which outer form to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptForm {
    /// v19.1+: `case` pipefail test, subshell with TERM trap and `< /dev/null`.
    V19,
    /// `FF_USE_LEGACY_BASH_EVAL=true` (v17.4–v19.0 header): `: | eval $'...'`.
    Legacy,
}

/// Wrap a stage body into a complete script file.
pub fn wrap(body: &str, form: ScriptForm, xtrace: bool) -> String {
    let mut s = String::from("#!/usr/bin/env bash\n\n");
    match form {
        ScriptForm::V19 => {
            s.push_str("trap 'exit 1' TERM\n\n");
            if xtrace {
                s.push_str("set -o xtrace\n");
            }
            s.push_str("case \"$(set -o 2>/dev/null)\" in *pipefail*) set -o pipefail ;; esac\n");
            s.push_str("set -o errexit\n");
            s.push_str("set +o noclobber\n");
            s.push_str("( trap 'exit 1' TERM; eval ");
            s.push_str(&ansi_c_quote(body));
            s.push_str(" ) < /dev/null\n");
        }
        ScriptForm::Legacy => {
            s.push_str("trap exit 1 TERM\n\n");
            if xtrace {
                s.push_str("set -o xtrace\n");
            }
            s.push_str(
                "if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n",
            );
            s.push_str("set +o noclobber\n");
            s.push_str(": | eval ");
            s.push_str(&ansi_c_quote(body));
            s.push('\n');
        }
    }
    s.push_str("exit 0\n");
    s
}

/// Green `$ cmd` echo line as the runner prints it before each user command.
pub fn echo_command(cmd: &str) -> String {
    let mut lines = cmd.lines();
    let first = lines.next().unwrap_or("");
    let shown = if lines.next().is_some() {
        format!("$ {first} # collapsed multi-line command")
    } else {
        format!("$ {first}")
    };
    format!(
        "echo {}",
        ansi_c_quote(&format!("\x1b[32;1m{shown}\x1b[0;m"))
    )
}

/// Green informational line (`Fetching changes...` and the like).
pub fn echo_info(text: &str) -> String {
    format!(
        "echo {}",
        ansi_c_quote(&format!("\x1b[32;1m{text}\x1b[0;m"))
    )
}

/// Yellow warning line.
pub fn echo_warning(text: &str) -> String {
    format!(
        "echo {}",
        ansi_c_quote(&format!("\x1b[0;33mWARNING: {text}\x1b[0;m"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ansi_c_quote("a'b\\c\nd\x1b"), "$'a\\'b\\\\c\\nd\\x1b'");
        assert_eq!(shell_word("abc/def"), "abc/def");
        assert_eq!(shell_word("a b"), "$'a b'");
        assert_eq!(shell_word(""), "$''");
        assert_eq!(dq_path("builds/x"), "\"$PWD/builds/x\"");
        assert_eq!(dq_path("/a/$b"), "\"/a/\\$b\"");
    }
}
