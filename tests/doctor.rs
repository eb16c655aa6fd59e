//! `doctor` on a fake host: small shell scripts stand in for `tart`, `gitlab-runner`, `ssh`
//! and `softnet`, and PATH holds only them, so every check sees exactly what a test set up.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

/// The SSH control sockets live below the state dir, and Unix socket paths are short (104
/// bytes on macOS). Under a long `$TMPDIR` (the Nix build sandbox on macOS, where nothing
/// else is writable) a test host's state dir is too long for them, and doctor rightly says
/// so; the tests of that check set their state dir explicitly.
const SOCKET_CHECK: &str = "SSH control socket path";

/// An executable found on the tests' own PATH (the Nix build sandbox has no /bin/cat).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH is set");
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH"))
}

struct Host {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Host {
    /// A healthy host: Tart 2.35.0 with no VMs, gitlab-runner 17.6.0, an ssh client.
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let host = Host { dir, bin };
        host.tart("2.35.0");
        host.list("[]");
        host.script(
            "gitlab-runner",
            "echo 'Version:      17.6.0'\necho 'Git revision: 1a2b3c4d'\necho 'OS/Arch:      darwin/arm64'",
        );
        host.script("ssh", "echo 'OpenSSH_9.9p1, LibreSSL 3.3.6' >&2");
        std::fs::create_dir(host.path("tart-home")).unwrap();
        host
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A tart that prints `version` and answers `list` from list.json.
    fn tart(&self, version: &str) {
        let list = self.path("list.json");
        self.script(
            "tart",
            &format!(
                "case \"$1\" in\n  --version) echo '{version}' ;;\n  list) '{}' '{}' ;;\n  *) echo \"Error: unexpected $*\" >&2; exit 1 ;;\nesac",
                tool("cat").display(),
                list.display()
            ),
        );
    }

    fn list(&self, json: &str) {
        std::fs::write(self.path("list.json"), json).unwrap();
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DRIVER);
        cmd.arg("doctor");
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(self.state_dir());
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", &self.bin)
            .env("HOME", self.dir.path())
            .env("TART_HOME", self.path("tart-home"))
            .env("USER", "ci");
        cmd
    }

    /// Runs doctor with `--format json`: its exit code and checks.
    fn json(&self, args: &[&str]) -> (i32, Vec<Value>) {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let out = self.command(&all).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let checks: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), checks)
    }

    /// Writes gitlab-runner's config.toml; `{driver}` stands for a real executable.
    fn runner_config(&self, toml: &str) -> String {
        let driver = self.script("driver", "exit 0");
        let path = self.path("config.toml");
        std::fs::write(
            &path,
            toml.replace("{driver}", &driver.display().to_string()),
        )
        .unwrap();
        path.display().to_string()
    }
}

/// Doctor's verdict on a host the test set up to be healthy: no check fails but the socket
/// path check under a long `$TMPDIR` (see SOCKET_CHECK), and the exit code says whether any
/// check failed.
fn assert_healthy(code: i32, checks: &[Value]) {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(
        failed.iter().all(|&name| name == SOCKET_CHECK),
        "failed: {failed:?}\n{checks:#?}"
    );
    assert_eq!(code, if failed.is_empty() { 0 } else { 2 }, "{checks:#?}");
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

fn status(checks: &[Value], name: &str) -> String {
    check(checks, name)["status"].as_str().unwrap().to_string()
}

fn detail(checks: &[Value], name: &str) -> String {
    check(checks, name)["detail"].as_str().unwrap().to_string()
}

fn fix(checks: &[Value], name: &str) -> String {
    check(checks, name)["fix"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

const GOOD_RUNNER: &str = r#"
concurrent = 1
[[runners]]
  name = "mac-1"
  executor = "custom"
  shell = "bash"
  limit = 1
  [runners.custom]
    config_exec = "{driver}"
    prepare_exec = "{driver}"
    run_exec = "{driver}"
    cleanup_exec = "{driver}"
"#;

#[test]
fn healthy_host_passes_with_a_text_report_and_exit_zero() {
    let host = Host::new();
    let out = host.command(&[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PASS  tart: "), "{text}");
    assert!(text.contains("2.35.0"), "{text}");
    assert!(text.contains("PASS  gitlab-runner: "), "{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    if failed.is_empty() {
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("0 failed"), "{text}");
    } else {
        let only_socket = format!("FAIL  {SOCKET_CHECK}: ");
        assert!(failed.iter().all(|l| l.starts_with(&only_socket)), "{text}");
        assert_eq!(out.status.code(), Some(2), "{text}");
    }
}

#[test]
fn json_output_gives_check_status_detail_and_fix_for_every_line() {
    let host = Host::new();
    let (code, checks) = host.json(&[]);
    assert_healthy(code, &checks);
    assert!(checks.len() >= 10, "{checks:#?}");
    for c in &checks {
        let s = c["status"].as_str().unwrap();
        assert!(["pass", "warn", "fail", "skip"].contains(&s), "{c}");
        assert!(c["check"].is_string() && c["detail"].is_string(), "{c}");
        assert!(c.as_object().unwrap().contains_key("fix"), "{c}");
        if s == "warn" || s == "fail" {
            assert!(c["fix"].is_string(), "a problem without a fix: {c}");
        }
    }
}

#[test]
fn missing_tart_fails_with_install_fix_and_system_failure_code() {
    let host = Host::new();
    std::fs::remove_file(host.bin.join("tart")).unwrap();
    let (code, checks) = host.json(&[]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "tart"), "fail");
    assert!(fix(&checks, "tart").contains("--tart-executable"));
}

#[test]
fn missing_tart_fix_names_tarts_current_homebrew_tap_first() {
    let host = Host::new();
    std::fs::remove_file(host.bin.join("tart")).unwrap();
    let (_, checks) = host.json(&[]);
    let fix = fix(&checks, "tart");
    let current = fix.find("brew install openai/tools/tart").expect(&fix);
    assert!(
        fix.find("cirruslabs/cli/tart")
            .is_none_or(|old| old > current),
        "{fix}"
    );
}

#[test]
fn failed_doctor_names_failed_checks_on_stderr() {
    let host = Host::new();
    let out = host.command(&["-x", "/nonexistent/tart"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let (_, checks) = host.json(&["-x", "/nonexistent/tart"]);
    let expected = if status(&checks, SOCKET_CHECK) == "fail" {
        format!("2 checks failed: tart, {SOCKET_CHECK}")
    } else {
        "1 check failed: tart".to_string()
    };
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn tart_executable_option_is_resolved_on_path() {
    let host = Host::new();
    std::fs::rename(host.bin.join("tart"), host.bin.join("my-tart")).unwrap();
    let (code, checks) = host.json(&["-x", "my-tart"]);
    assert_healthy(code, &checks);
    assert!(detail(&checks, "tart").contains("my-tart"));
}

#[test]
fn non_executable_tart_fails_with_chmod_fix() {
    let host = Host::new();
    let tart = host.bin.join("tart");
    std::fs::set_permissions(&tart, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, checks) = host.json(&["-x", tart.to_str().unwrap()]);
    assert_eq!(status(&checks, "tart"), "fail");
    assert!(fix(&checks, "tart").contains("chmod +x"));
}

#[test]
fn tart_older_than_2_27_is_a_warning_with_ssh_transport() {
    let host = Host::new();
    host.tart("2.26.1");
    let (code, checks) = host.json(&[]);
    assert_healthy(code, &checks);
    assert_eq!(status(&checks, "tart"), "warn");
    assert!(detail(&checks, "tart").contains("exec"));
}

#[test]
fn tart_older_than_2_27_fails_with_exec_transport() {
    let host = Host::new();
    host.tart("2.26.1");
    let (code, checks) = host.json(&["--transport", "exec"]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "tart"), "fail");
}

#[test]
fn hung_tart_is_bounded_and_fails() {
    let host = Host::new();
    host.script("tart", &format!("exec '{}' 60", tool("sleep").display()));
    let started = Instant::now();
    let (_, checks) = host.json(&[]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status(&checks, "tart"), "fail");
    assert!(detail(&checks, "tart").contains("did not finish"));
}

#[test]
fn missing_gitlab_runner_fails() {
    let host = Host::new();
    std::fs::remove_file(host.bin.join("gitlab-runner")).unwrap();
    let (code, checks) = host.json(&[]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "gitlab-runner"), "fail");
    assert!(fix(&checks, "gitlab-runner").contains("--gitlab-runner"));
}

#[test]
fn gitlab_runner_version_comes_from_its_version_line() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "gitlab-runner"), "pass");
    assert!(detail(&checks, "gitlab-runner").contains("version 17.6.0"));
}

#[test]
fn gitlab_runner_option_names_its_executable() {
    let host = Host::new();
    std::fs::rename(host.bin.join("gitlab-runner"), host.path("runner-bin")).unwrap();
    let runner = host.path("runner-bin");
    let (_, checks) = host.json(&["--gitlab-runner", runner.to_str().unwrap()]);
    assert_eq!(status(&checks, "gitlab-runner"), "pass");
}

#[test]
#[cfg_attr(
    target_os = "macos",
    ignore = "on macOS these checks run: see the macOS tests below"
)]
fn lc_uuid_and_gui_checks_are_skipped_off_macos_with_a_reason() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    for name in ["gitlab-runner LC_UUID", "driver LC_UUID", "GUI session"] {
        assert_eq!(status(&checks, name), "skip", "{name}");
        assert!(detail(&checks, name).contains("not a macOS host"), "{name}");
    }
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "macOS only: LC_UUID is a Mach-O load command"
)]
fn driver_has_an_lc_uuid_and_a_runner_script_is_not_an_executable_on_macos() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "driver LC_UUID"), "pass", "{checks:#?}");
    // The test host's gitlab-runner is a shell script, not a Mach-O executable.
    assert_eq!(status(&checks, "gitlab-runner LC_UUID"), "warn");
    assert!(fix(&checks, "gitlab-runner LC_UUID").contains("real executable"));
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "macOS only: the GUI session check reads the console's owner"
)]
fn gui_session_is_checked_on_macos_and_never_fails_doctor() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    // Who owns the console depends on the Mac (nobody, in a build sandbox): a warning at most.
    let s = status(&checks, "GUI session");
    assert!(s == "pass" || s == "warn", "{checks:#?}");
}

#[test]
fn runner_config_is_skipped_when_not_given() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "config.toml"), "skip");
    assert!(detail(&checks, "config.toml").contains("--runner-config"));
}

#[test]
fn matching_runner_config_passes() {
    let host = Host::new();
    let config = host.runner_config(GOOD_RUNNER);
    let (code, checks) = host.json(&["--runner-config", &config]);
    assert_healthy(code, &checks);
    for name in [
        "config.toml concurrent",
        "runner mac-1: executables",
        "runner mac-1: shell",
        "runner mac-1: timeouts",
        "runner mac-1: limit",
    ] {
        assert_eq!(status(&checks, name), "pass", "{name}: {checks:#?}");
    }
}

#[test]
fn concurrent_above_driver_concurrency_fails() {
    let host = Host::new();
    let config = host.runner_config(&GOOD_RUNNER.replace("concurrent = 1", "concurrent = 4"));
    let (code, checks) = host.json(&["--runner-config", &config, "--concurrency", "2"]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "config.toml concurrent"), "fail");
    assert!(fix(&checks, "config.toml concurrent").contains("concurrent = 2"));
}

#[test]
fn concurrent_below_driver_concurrency_warns() {
    let host = Host::new();
    let config = host.runner_config(GOOD_RUNNER);
    let (_, checks) = host.json(&["--runner-config", &config, "--concurrency", "2"]);
    assert_eq!(status(&checks, "config.toml concurrent"), "warn");
}

#[test]
fn missing_run_exec_fails() {
    let host = Host::new();
    let config = host.runner_config(&GOOD_RUNNER.replace("run_exec = \"{driver}\"", ""));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: executables"), "fail");
    assert!(detail(&checks, "runner mac-1: executables").contains("run_exec is not set"));
}

#[test]
fn exec_path_that_does_not_exist_fails() {
    let host = Host::new();
    let config = host.runner_config(&GOOD_RUNNER.replace(
        "prepare_exec = \"{driver}\"",
        "prepare_exec = \"/nope/driver\"",
    ));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: executables"), "fail");
    assert!(detail(&checks, "runner mac-1: executables").contains("/nope/driver"));
}

#[test]
fn runner_shell_other_than_bash_fails() {
    let host = Host::new();
    let config = host.runner_config(&GOOD_RUNNER.replace("shell = \"bash\"", "shell = \"zsh\""));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: shell"), "fail");
}

#[test]
fn prepare_timeout_shorter_than_boot_timeout_fails() {
    let host = Host::new();
    let config = host.runner_config(&format!("{GOOD_RUNNER}    prepare_exec_timeout = 120\n"));
    let (_, checks) = host.json(&["--runner-config", &config, "--timeout", "300"]);
    assert_eq!(status(&checks, "runner mac-1: timeouts"), "fail");
    assert!(detail(&checks, "runner mac-1: timeouts").contains("prepare_exec_timeout = 120s"));
}

#[test]
fn short_cleanup_timeout_warns() {
    let host = Host::new();
    let config = host.runner_config(&format!("{GOOD_RUNNER}    cleanup_exec_timeout = 20\n"));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: timeouts"), "warn");
}

#[test]
fn runner_limit_above_concurrency_warns() {
    let host = Host::new();
    let config = host.runner_config(&GOOD_RUNNER.replace("limit = 1", "limit = 5"));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: limit"), "warn");
}

#[test]
fn runners_of_other_executors_are_skipped() {
    let host = Host::new();
    let config = host.runner_config(
        "concurrent = 1\n[[runners]]\n  name = \"docker-1\"\n  executor = \"docker\"\n",
    );
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner docker-1"), "skip");
}

#[test]
fn invalid_runner_config_fails() {
    let host = Host::new();
    let config = host.runner_config("concurrent = [\n");
    let (code, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "config.toml"), "fail");
}

#[test]
fn concurrency_above_apple_limit_with_macos_images_warns() {
    let host = Host::new();
    host.list(
        r#"[{"Source":"OCI","Name":"ghcr.io/cirruslabs/macos-tahoe-base:latest","Disk":50,"Size":21,"State":"stopped"}]"#,
    );
    let (_, checks) = host.json(&["--concurrency", "3"]);
    assert_eq!(status(&checks, "macOS VM limit"), "warn");
    assert!(detail(&checks, "macOS VM limit").contains("macos-tahoe-base"));
}

#[test]
fn concurrency_above_apple_limit_without_macos_images_passes() {
    let host = Host::new();
    host.list(r#"[{"Source":"OCI","Name":"ghcr.io/cirruslabs/ubuntu:latest","Size":3,"State":"stopped"}]"#);
    let (_, checks) = host.json(&["--concurrency", "3"]);
    assert_eq!(status(&checks, "macOS VM limit"), "pass");
}

#[test]
fn macos_vm_limit_above_two_fails() {
    let host = Host::new();
    let (_, checks) = host.json(&["--macos-vm-limit", "3"]);
    // The driver refuses the option itself, and doctor says which one.
    assert_eq!(status(&checks, "driver options"), "fail");
    assert!(detail(&checks, "driver options").contains("--macos-vm-limit"));
}

#[test]
fn existing_builds_and_cache_dirs_pass_with_free_space() {
    let host = Host::new();
    std::fs::create_dir(host.path("builds")).unwrap();
    std::fs::create_dir(host.path("cache")).unwrap();
    let (builds, cache) = (host.path("builds"), host.path("cache"));
    let (_, checks) = host.json(&[
        "--builds-dir",
        builds.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    // The test machine's disk decides between pass and a low-space warning.
    for name in ["builds dir", "cache dir"] {
        let s = status(&checks, name);
        assert!(s == "pass" || s == "warn", "{name}: {checks:#?}");
        assert!(detail(&checks, name).contains("GB free"), "{name}");
    }
}

#[test]
fn missing_builds_dir_warns_with_mkdir_fix() {
    let host = Host::new();
    let builds = host.path("no-builds");
    let (_, checks) = host.json(&["--builds-dir", builds.to_str().unwrap()]);
    assert_eq!(status(&checks, "builds dir"), "warn");
    assert!(fix(&checks, "builds dir").contains("mkdir -p"));
}

#[test]
fn missing_volume_dir_fails() {
    let host = Host::new();
    let volume = format!("{}:/opt/data:ro", host.path("no-data").display());
    let (code, checks) = host.json(&["--volume", &volume]);
    assert_eq!(code, 2);
    let name = format!("volume {}", host.path("no-data").display());
    assert_eq!(status(&checks, &name), "fail");
}

#[test]
fn unset_host_dirs_are_skipped() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "builds dir"), "skip");
    assert_eq!(status(&checks, "cache dir"), "skip");
}

#[test]
fn tart_home_smaller_than_largest_image_warns() {
    let host = Host::new();
    host.list(r#"[{"Source":"OCI","Name":"ghcr.io/huge/image:latest","Disk":50,"Size":99999999,"State":"stopped"}]"#);
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "tart home"), "warn");
    assert!(detail(&checks, "tart home").contains("ghcr.io/huge/image:latest"));
    assert!(fix(&checks, "tart home").contains("tart prune"));
}

#[test]
fn tart_home_with_room_for_cached_images_passes() {
    let host = Host::new();
    host.list(
        r#"[{"Source":"OCI","Name":"ghcr.io/small/image:latest","Size":0,"State":"stopped"}]"#,
    );
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "tart home"), "pass");
    assert!(detail(&checks, "tart home").contains("tart-home"));
}

#[test]
fn running_vms_of_others_warn_and_are_counted() {
    let host = Host::new();
    host.list(r#"[{"Source":"local","Name":"my-dev-vm","State":"running","Size":20}]"#);
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "VMs"), "warn");
    assert!(detail(&checks, "VMs").contains("my-dev-vm"));
    assert!(detail(&checks, "VMs").contains("1 local VMs, 1 running"));
}

#[test]
fn vm_of_ours_without_a_live_job_is_an_orphan_with_gc_fix() {
    let host = Host::new();
    host.list(r#"[{"Source":"local","Name":"tartdrv-abc123-42","State":"running"}]"#);
    // Its record is in this state directory, and no process holds its lock.
    std::fs::create_dir_all(host.state_dir().join("vms/tartdrv-abc123-42")).unwrap();
    let (code, checks) = host.json(&[]);
    assert_healthy(code, &checks); // orphans are a warning
    assert_eq!(status(&checks, "orphaned VMs"), "warn");
    assert!(detail(&checks, "orphaned VMs").contains("tartdrv-abc123-42"));
    assert!(fix(&checks, "orphaned VMs").contains("gitlab-runner-tart-driver gc"));
}

/// gc removes only VMs it can prove its own, and doctor says the same.
#[test]
fn vm_of_ours_without_a_record_here_is_left_alone_not_an_orphan() {
    let host = Host::new();
    host.list(r#"[{"Source":"local","Name":"tartdrv-abc123-42","State":"running"}]"#);
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "orphaned VMs"), "pass", "{checks:#?}");
    assert!(detail(&checks, "orphaned VMs").contains("left alone"));
    assert!(detail(&checks, "orphaned VMs").contains("tartdrv-abc123-42"));
}

#[test]
fn vm_whose_lock_is_held_is_not_an_orphan() {
    let host = Host::new();
    host.list(r#"[{"Source":"local","Name":"tartdrv-abc123-42","State":"running"}]"#);
    let vm_dir = host.state_dir().join("vms/tartdrv-abc123-42");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let lock = std::fs::File::create(vm_dir.join("lock")).unwrap();
    // SAFETY: flock on a valid descriptor.
    let rc = unsafe {
        libc::flock(
            std::os::unix::io::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0);
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "orphaned VMs"), "pass", "{checks:#?}");
    drop(lock);
}

#[test]
fn leftover_job_state_without_a_vm_is_reported() {
    let host = Host::new();
    std::fs::create_dir_all(host.state_dir().join("vms/tartdrv-abc123-7")).unwrap();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "orphaned VMs"), "warn");
    assert!(detail(&checks, "orphaned VMs").contains("state of tartdrv-abc123-7"));
}

#[test]
fn doctor_leaves_no_lock_files_behind() {
    let host = Host::new();
    host.list(r#"[{"Source":"local","Name":"tartdrv-abc123-42","State":"stopped"}]"#);
    host.json(&[]);
    assert!(!host.state_dir().exists());
}

#[test]
fn failing_tart_list_fails_the_vm_check() {
    let host = Host::new();
    host.script(
        "tart",
        "case \"$1\" in --version) echo 2.35.0 ;; *) echo 'Error: TART_HOME is invalid' >&2; exit 1 ;; esac",
    );
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "VMs"), "fail");
    assert!(detail(&checks, "VMs").contains("TART_HOME is invalid"));
}

#[test]
fn state_dir_writable_by_others_fails() {
    let host = Host::new();
    std::fs::create_dir(host.state_dir()).unwrap();
    std::fs::set_permissions(host.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, checks) = host.json(&[]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "state dir"), "fail");
    assert!(fix(&checks, "state dir").contains("chmod go-w"));
}

#[test]
fn missing_state_dir_in_writable_parent_passes() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "state dir"), "pass");
    assert!(detail(&checks, "state dir").contains("does not exist yet"));
}

#[test]
fn short_state_dir_passes_the_socket_path_check() {
    let host = Host::new();
    let (_, checks) = host.json(&["--state-dir", "/s"]);
    assert_eq!(status(&checks, SOCKET_CHECK), "pass", "{checks:#?}");
}

#[test]
fn long_state_dir_fails_the_socket_path_check() {
    let host = Host::new();
    let long = host.path(&"s".repeat(80));
    let (_, checks) = host.json(&["--state-dir", long.to_str().unwrap()]);
    assert_eq!(status(&checks, "SSH control socket path"), "fail");
    assert!(fix(&checks, "SSH control socket path").contains("bytes shorter"));
}

#[test]
fn missing_ssh_client_fails() {
    let host = Host::new();
    std::fs::remove_file(host.bin.join("ssh")).unwrap();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "ssh client"), "fail");
}

#[test]
fn ssh_client_version_is_reported() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "ssh client"), "pass");
    assert!(detail(&checks, "ssh client").contains("OpenSSH_9.9p1"));
}

#[test]
fn softnet_is_skipped_when_not_enabled() {
    let host = Host::new();
    let (_, checks) = host.json(&[]);
    assert_eq!(status(&checks, "softnet"), "skip");
}

#[test]
fn enabled_softnet_missing_from_path_fails() {
    let host = Host::new();
    let (_, checks) = host.json(&["--softnet"]);
    assert_eq!(status(&checks, "softnet"), "fail");
}

#[test]
fn softnet_without_setuid_warns_with_chmod_fix() {
    let host = Host::new();
    host.script("softnet", "exit 0");
    let (_, checks) = host.json(&["--softnet"]);
    assert_eq!(status(&checks, "softnet"), "warn");
    assert!(fix(&checks, "softnet").contains("chmod u+s"));
}

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "needs root to make a setuid-root file (./test.sh runs it)"
)]
fn setuid_root_softnet_passes() {
    let host = Host::new();
    let softnet = host.script("softnet", "exit 0");
    std::fs::set_permissions(&softnet, std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        std::fs::metadata(&softnet)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap(),
        0,
        "tests run as root"
    );
    let (_, checks) = host.json(&["--softnet"]);
    assert_eq!(status(&checks, "softnet"), "pass", "{checks:#?}");
}

#[test]
fn invalid_driver_options_fail_but_other_checks_still_run() {
    let host = Host::new();
    let config = host.path("driver.yaml");
    std::fs::write(&config, "pul_policy: always\n").unwrap();
    let (code, checks) = host.json(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(status(&checks, "driver options"), "fail");
    assert!(detail(&checks, "driver options").contains("pul_policy"));
    assert_eq!(status(&checks, "tart"), "pass");
}

#[test]
fn prepare_args_concurrency_differing_from_concurrent_fails() {
    let host = Host::new();
    let config = host.runner_config(&format!(
        "{GOOD_RUNNER}    prepare_args = [\"prepare\", \"--concurrency\", \"3\"]\n"
    ));
    let (_, checks) = host.json(&["--runner-config", &config]);
    assert_eq!(status(&checks, "runner mac-1: --concurrency"), "fail");
    assert!(
        detail(&checks, "runner mac-1: --concurrency").contains("prepare_args has --concurrency 3")
    );
}
