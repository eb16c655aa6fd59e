//! The generated bash scripts (spec §4.3) behave as a driver relies on: exit codes propagate,
//! pipefail/errexit hold, stdin feeding is safe, SIGTERM gives exit 1.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::script::{self, ScriptForm};

/// Feed `script` to `bash` on stdin (as over SSH). Returns (exit code, stdout).
fn via_stdin(script: &str) -> (i32, String) {
    let mut child = Command::new("bash")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Run `script` as an executable file.
fn as_file(script: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("script");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = Command::new(&p).stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const FORMS: [ScriptForm; 2] = [ScriptForm::V19, ScriptForm::Legacy];

#[test]
fn v19_structure() {
    let s = script::wrap("echo hi\n", ScriptForm::V19, false);
    let lines: Vec<&str> = s.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "#!/usr/bin/env bash");
    assert_eq!(lines[1], "trap 'exit 1' TERM");
    assert!(lines[2].starts_with("case ") && lines[2].contains("pipefail"));
    assert_eq!(lines[3], "set -o errexit");
    assert_eq!(lines[4], "set +o noclobber");
    assert_eq!(
        lines[5],
        "( trap 'exit 1' TERM; eval $'echo hi\\n' ) < /dev/null"
    );
    assert_eq!(lines[6], "exit 0");
    assert_eq!(lines.len(), 7);
    assert!(script::wrap("x", ScriptForm::V19, true).contains("\nset -o xtrace\n"));
    assert!(script::wrap("x", ScriptForm::Legacy, false).contains("\n: | eval $'x'\n"));
}

#[test]
fn success_and_failing_command_exit_code_propagates() {
    for form in FORMS {
        let ok = script::wrap("echo a\necho b\n", form, false);
        assert_eq!(via_stdin(&ok), (0, "a\nb\n".into()));
        assert_eq!(as_file(&ok), (0, "a\nb\n".into()));
        let fail = script::wrap("echo a\nsh -c 'exit 7'\necho never\n", form, false);
        // The legacy `: | eval` form loses the code (bash reports 1), which is why upstream
        // introduced the subshell strategy; the v19.1+ form keeps it.
        let code = if form == ScriptForm::V19 { 7 } else { 1 };
        assert_eq!(via_stdin(&fail), (code, "a\n".into()), "{form:?}");
        assert_eq!(as_file(&fail), (code, "a\n".into()), "{form:?}");
        let pipe = script::wrap("false | true\necho never\n", form, false);
        assert_eq!(via_stdin(&pipe).0, 1, "pipefail {form:?}");
    }
}

#[test]
fn stdin_guard_keeps_the_script_away_from_user_commands() {
    for form in FORMS {
        // `cat` would swallow the rest of the script if it could read bash's stdin.
        let s = script::wrap("cat\nread -r x || echo no-input\necho after\n", form, false);
        let (code, out) = via_stdin(&format!("{s}echo trailing-line-is-not-run\n"));
        assert_eq!(code, 0, "{form:?}");
        assert_eq!(out, "no-input\nafter\n", "{form:?}");
    }
}

#[test]
fn quoting_survives_awkward_commands() {
    let cmds = [
        "echo 'single' \"double\" $'ansi\\tc' `echo back`",
        "printf '%s\\n' \"ünïcödé ✓\"",
        "X='a\\b'; echo \"$X\"",
        "echo multi\necho line",
    ];
    let mut body = String::new();
    for c in cmds {
        body.push_str(&script::echo_command(c));
        body.push('\n');
        body.push_str(c);
        body.push('\n');
    }
    let (code, out) = via_stdin(&script::wrap(&body, ScriptForm::V19, false));
    assert_eq!(code, 0);
    let expected = "\x1b[32;1m$ echo 'single' \"double\" $'ansi\\tc' `echo back`\x1b[0;m\nsingle double ansi\tc back\n\
\x1b[32;1m$ printf '%s\\n' \"ünïcödé ✓\"\x1b[0;m\nünïcödé ✓\n\
\x1b[32;1m$ X='a\\b'; echo \"$X\"\x1b[0;m\na\\b\n\
\x1b[32;1m$ echo multi # collapsed multi-line command\x1b[0;m\nmulti\nline\n";
    assert_eq!(out, expected);
}

#[test]
fn sigterm_makes_the_script_exit_1() {
    for form in FORMS {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(
            &p,
            script::wrap("echo started\nsleep 20\necho never\n", form, false),
        )
        .unwrap();
        let child = Command::new("bash")
            .arg(&p)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGTERM);
        }
        let out = child.wait_with_output().unwrap();
        // v19.1+: `trap 'exit 1' TERM` on both levels. The legacy header is literally
        // `trap exit 1 TERM` (traps HUP and TERM with a bare `exit`): 143 here.
        let code = if form == ScriptForm::V19 { 1 } else { 143 };
        assert_eq!(out.status.code(), Some(code), "{form:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    }
}
