//! gitlab-runner's `config.toml`, checked against the driver's options: `concurrent`, the
//! custom executor's exec paths, shell and timeouts.

use std::path::Path;

use toml::{Table, Value};

use super::probe::{is_executable, resolve};
use super::report::Check;
use crate::settings::Settings;

/// `path` is `--runner-config`'s value: without it, one skip.
pub(super) fn check_runner_config(path: Option<&Path>, settings: &Settings) -> Vec<Check> {
    let Some(path) = path else {
        return vec![Check::skip(
            "config.toml",
            "not checked: pass --runner-config /path/to/config.toml to compare gitlab-runner's settings with these options",
        )];
    };
    let table = match read_config(path) {
        Ok(table) => table,
        Err(check) => return vec![check],
    };
    let concurrent = table
        .get("concurrent")
        .and_then(Value::as_integer)
        .unwrap_or(1);
    let mut checks = vec![concurrent_check(concurrent, settings.concurrency)];
    let runners: Vec<&Table> = table
        .get("runners")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default();
    if runners.is_empty() {
        checks.push(Check::warn(
            "config.toml runners",
            format!("{} has no [[runners]]", path.display()),
            "register a runner (`gitlab-runner register --executor custom`) or write config.toml with `gitlab-runner-tart-driver runner-config`",
        ));
        return checks;
    }
    for (i, runner) in runners.iter().enumerate() {
        let name = runner
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let executor = runner.get("executor").and_then(Value::as_str).unwrap_or("");
        if executor != "custom" {
            checks.push(Check::skip(
                &format!("runner {name}"),
                format!("executor `{executor}`, not the custom executor this driver serves"),
            ));
            continue;
        }
        checks.extend(check_custom_runner(&name, runner, settings, concurrent));
    }
    checks
}

/// The file as a TOML table, or the failed check.
fn read_config(path: &Path) -> Result<Table, Check> {
    const NAME: &str = "config.toml";
    let text = std::fs::read_to_string(path).map_err(|e| {
        Check::fail(
            NAME,
            format!("cannot read {}: {e}", path.display()),
            "give --runner-config the config.toml gitlab-runner uses (`gitlab-runner list` prints its path)",
        )
    })?;
    text.parse().map_err(|e: toml::de::Error| {
        let first = e.to_string().lines().next().unwrap_or("").to_string();
        Check::fail(
            NAME,
            format!("{} is not valid TOML: {first}", path.display()),
            "fix the syntax; gitlab-runner refuses to start with it",
        )
    })
}

/// `concurrent` against `--concurrency` (`n`).
fn concurrent_check(concurrent: i64, n: u32) -> Check {
    const NAME: &str = "config.toml concurrent";
    if concurrent > i64::from(n) {
        Check::fail(
            NAME,
            format!(
                "concurrent = {concurrent} but --concurrency is {n}: gitlab-runner starts {concurrent} jobs and the extra ones wait for a VM slot, spending their timeout"
            ),
            format!("set concurrent = {n} in config.toml, or --concurrency {concurrent} in the driver's arguments"),
        )
    } else if concurrent < i64::from(n) {
        Check::warn(
            NAME,
            format!("concurrent = {concurrent} but --concurrency is {n}: only {concurrent} of this host's {n} VM slots are ever used, and `auto` CPU/memory sizes VMs for {n}"),
            format!("set concurrent = {n}, or --concurrency {concurrent}"),
        )
    } else {
        Check::pass(
            NAME,
            format!("concurrent = {concurrent}, equal to --concurrency"),
        )
    }
}

/// `*_exec_timeout`: gitlab-runner takes a missing or non-positive value as 3600 s.
pub(super) fn exec_timeout(custom: &Table, key: &str) -> i64 {
    match custom.get(key).and_then(Value::as_integer) {
        Some(t) if t > 0 => t,
        _ => 3600,
    }
}

/// One `[[runners]]` section of the custom executor: a line each for its executables, the
/// `--concurrency` its stages get (when they get one), its shell, timeouts and limit.
pub(super) fn check_custom_runner(
    name: &str,
    runner: &Table,
    settings: &Settings,
    concurrent: i64,
) -> Vec<Check> {
    let empty = Table::new();
    let custom = runner
        .get("custom")
        .and_then(Value::as_table)
        .unwrap_or(&empty);
    let mut checks = vec![executables_check(name, custom)];
    checks.extend(concurrency_check(name, custom, concurrent));
    checks.push(shell_check(name, runner));
    checks.push(timeouts_check(name, custom, settings.timeout_secs as i64));
    checks.push(limit_check(name, runner, settings, concurrent));
    checks
}

/// The four `*_exec` paths: set, there and executable.
fn executables_check(name: &str, custom: &Table) -> Check {
    let check = format!("runner {name}: executables");
    let mut problems = Vec::new();
    let mut fine = Vec::new();
    let mut fail = false;
    for stage in ["config", "prepare", "run", "cleanup"] {
        let key = format!("{stage}_exec");
        match custom.get(&key).and_then(Value::as_str) {
            None if stage == "config" => problems.push(format!(
                "{key} is not set (gitlab-runner then ignores the driver's builds and cache directories)"
            )),
            None => {
                fail = true;
                problems.push(format!("{key} is not set"));
            }
            Some(exe) => match resolve(exe) {
                Some(p) if is_executable(&p) => fine.push(format!("{key} {}", p.display())),
                Some(p) => {
                    fail = true;
                    problems.push(format!("{key} {} is not executable", p.display()));
                }
                None => {
                    fail = true;
                    problems.push(format!("{key} `{exe}` does not exist"));
                }
            },
        }
    }
    let exec_fix = "set config_exec, prepare_exec, run_exec and cleanup_exec under [runners.custom] to the driver's absolute path, with args [\"config\"], [\"prepare\", ...], [\"run\", ...], [\"cleanup\", ...]";
    if problems.is_empty() {
        Check::pass(&check, fine.join(", "))
    } else if fail {
        Check::fail(&check, problems.join("; "), exec_fix)
    } else {
        Check::warn(&check, problems.join("; "), exec_fix)
    }
}

/// The `--concurrency` the stages really get, when config.toml passes one.
fn concurrency_check(name: &str, custom: &Table, concurrent: i64) -> Option<Check> {
    let check = format!("runner {name}: --concurrency");
    let mut given: Vec<(String, String)> = Vec::new();
    for stage in ["config", "prepare", "run", "cleanup"] {
        let args: Vec<&str> = custom
            .get(&format!("{stage}_args"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (i, arg) in args.iter().enumerate() {
            let value = match arg.strip_prefix("--concurrency") {
                Some("") => args.get(i + 1).map(|v| v.to_string()),
                Some(rest) => rest.strip_prefix('=').map(str::to_string),
                None => None,
            };
            if let Some(v) = value {
                given.push((format!("{stage}_args"), v));
            }
        }
    }
    let differs: Vec<String> = given
        .iter()
        .filter(|(_, v)| v.parse::<i64>().ok() != Some(concurrent))
        .map(|(k, v)| format!("{k} has --concurrency {v}"))
        .collect();
    if !differs.is_empty() {
        return Some(Check::fail(
            &check,
            format!("{}, but concurrent = {concurrent}", differs.join(", ")),
            format!("give every stage --concurrency {concurrent} (or write config.toml with `gitlab-runner-tart-driver runner-config`)"),
        ));
    }
    let (k, v) = given.first()?;
    Some(Check::pass(
        &check,
        format!("{k}: --concurrency {v}, equal to concurrent"),
    ))
}

/// The driver runs gitlab-runner's scripts with bash.
fn shell_check(name: &str, runner: &Table) -> Check {
    let check = format!("runner {name}: shell");
    match runner.get("shell").and_then(Value::as_str) {
        None | Some("bash") => Check::pass(&check, "bash"),
        Some(other) => Check::fail(
            &check,
            format!("shell = \"{other}\": gitlab-runner would generate {other} scripts, which the driver runs with bash"),
            "set shell = \"bash\" in this [[runners]] section (the guest's login shell is chosen with --shell)",
        ),
    }
}

/// gitlab-runner's timeouts for the stages against the VM boot timeout (`boot`, seconds).
fn timeouts_check(name: &str, custom: &Table, boot: i64) -> Check {
    let check = format!("runner {name}: timeouts");
    let prepare = exec_timeout(custom, "prepare_exec_timeout");
    let cleanup = exec_timeout(custom, "cleanup_exec_timeout");
    let config = exec_timeout(custom, "config_exec_timeout");
    let graceful = match custom
        .get("graceful_kill_timeout")
        .and_then(Value::as_integer)
    {
        Some(t) if t > 0 => t,
        _ => 600,
    };
    let summary = format!(
        "config {config}s, prepare {prepare}s, cleanup {cleanup}s, graceful kill {graceful}s"
    );
    let fix = "under [runners.custom]: prepare_exec_timeout = 3600, cleanup_exec_timeout = 600, config_exec_timeout = 300, graceful_kill_timeout = 120";
    if prepare < boot {
        return Check::fail(
            &check,
            format!("prepare_exec_timeout = {prepare}s is shorter than the VM boot timeout (--timeout {boot}s): gitlab-runner kills prepare before the VM may be up ({summary})"),
            fix,
        );
    }
    let mut short = Vec::new();
    if prepare < boot + 600 {
        short.push(format!(
            "prepare_exec_timeout = {prepare}s leaves under 10 minutes beyond the boot timeout to pull an image"
        ));
    }
    if cleanup < 60 {
        short.push(format!(
            "cleanup_exec_timeout = {cleanup}s may not let cleanup stop and delete the VM"
        ));
    }
    if config < 10 {
        short.push(format!("config_exec_timeout = {config}s"));
    }
    if graceful < 30 {
        short.push(format!(
            "graceful_kill_timeout = {graceful}s may not let a cancelled job delete its VM"
        ));
    }
    if short.is_empty() {
        Check::pass(&check, summary)
    } else {
        Check::warn(&check, short.join("; "), fix)
    }
}

/// `limit`: jobs of this runner at once (0 = no limit of its own).
fn limit_check(name: &str, runner: &Table, settings: &Settings, concurrent: i64) -> Check {
    let check = format!("runner {name}: limit");
    let n = i64::from(settings.concurrency);
    match runner.get("limit").and_then(Value::as_integer) {
        Some(l) if l < 0 => Check::fail(
            &check,
            format!("limit = {l} is negative"),
            format!("set limit between 1 and {n}"),
        ),
        None | Some(0) => Check::pass(
            &check,
            format!(
                "no limit of its own; concurrent ({concurrent}) and the host's {n} slots bound it"
            ),
        ),
        Some(l) if l > n => Check::warn(
            &check,
            format!("limit = {l} exceeds --concurrency {n}: jobs beyond {n} only wait for a slot"),
            format!("set limit = {n} or less"),
        ),
        Some(l) => Check::pass(&check, format!("limit = {l}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_exec_timeout_means_gitlab_default() {
        let t: Table = "prepare_exec_timeout = 0\ncleanup_exec_timeout = 90"
            .parse()
            .unwrap();
        assert_eq!(exec_timeout(&t, "prepare_exec_timeout"), 3600);
        assert_eq!(exec_timeout(&t, "cleanup_exec_timeout"), 90);
        assert_eq!(exec_timeout(&t, "config_exec_timeout"), 3600);
    }
}
