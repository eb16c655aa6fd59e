//! The TOML `runner-config` writes: the global settings and one `[[runners]]` table per
//! runner, whose custom executor calls this driver with `--concurrency` equal to
//! `concurrent`, and the spec's `extra` keys merged in.

use std::path::Path;

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

use super::spec::Spec;
use super::token::Token;

/// Default `[runners.custom]` timeouts, in seconds. `prepare` may pull a multi-gigabyte
/// image and boot a VM, so it keeps GitLab's one-hour default; `config` is quick.
pub(super) const CONFIG_EXEC_TIMEOUT: i64 = 300;
pub(super) const PREPARE_EXEC_TIMEOUT: i64 = 3600;
pub(super) const CLEANUP_EXEC_TIMEOUT: i64 = 600;
/// Time between SIGTERM and SIGKILL: enough for the driver to stop and delete its VM.
pub(super) const GRACEFUL_KILL_TIMEOUT: i64 = 120;
pub(super) const FORCE_KILL_TIMEOUT: i64 = 30;

/// Guest-side defaults; the driver's config stage may report other paths.
pub(super) const DEFAULT_BUILDS_DIR: &str = "/var/tmp/builds";
pub(super) const DEFAULT_CACHE_DIR: &str = "/var/tmp/cache";

pub(super) fn json_to_toml(v: &serde_json::Value, at: &str) -> Result<Value> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => bail!("{at} is null, which TOML cannot represent; remove the key instead"),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if let Some(f) = n.as_f64().filter(|_| n.as_u64().is_none()) {
                Value::Float(f)
            } else {
                bail!("{at} is {n}, too large for a TOML integer")
            }
        }
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| json_to_toml(x, &format!("{at}[{i}]")))
                .collect::<Result<_>>()?,
        ),
        J::Object(o) => Value::Table(map_to_table(o, at)?),
    })
}

pub(super) fn map_to_table(
    o: &serde_json::Map<String, serde_json::Value>,
    at: &str,
) -> Result<Table> {
    o.iter()
        .map(|(k, v)| Ok((k.clone(), json_to_toml(v, &format!("{at}.{k}"))?)))
        .collect()
}

/// Deep-merges `extra` into `base`: tables merge key by key, anything else is replaced.
pub(super) fn merge(base: &mut Table, extra: Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub(super) fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Value {
    Value::Array(items.into_iter().map(|s| Value::String(s.into())).collect())
}

pub(super) fn render(spec: &Spec, tokens: &[Token], spec_path: &Path) -> Result<String> {
    let n = spec.concurrent;
    let mut top = Table::new();
    top.insert("concurrent".into(), Value::Integer(n.into()));
    top.insert(
        "check_interval".into(),
        Value::Integer(spec.check_interval.into()),
    );
    if let Some(t) = spec.shutdown_timeout {
        top.insert("shutdown_timeout".into(), Value::Integer(t.into()));
    }
    if let Some(l) = &spec.log_level {
        top.insert("log_level".into(), Value::String(l.clone()));
    }
    merge(&mut top, map_to_table(&spec.extra, "extra")?);

    let mut runners = Vec::with_capacity(spec.runners.len());
    for (i, (r, token)) in spec.runners.iter().zip(tokens).enumerate() {
        let with_config = |stage: &[&str], tail: &[String]| {
            let mut args: Vec<String> = stage.iter().map(|s| (*s).to_owned()).collect();
            if let Some(c) = &r.driver_config {
                args.push("--config".into());
                args.push(c.clone());
            }
            args.extend(tail.iter().cloned());
            strings(args)
        };
        let mut custom = Table::new();
        custom.insert("config_exec".into(), Value::String(r.driver.clone()));
        custom.insert("config_args".into(), with_config(&["config"], &[]));
        custom.insert(
            "config_exec_timeout".into(),
            Value::Integer(CONFIG_EXEC_TIMEOUT),
        );
        custom.insert("prepare_exec".into(), Value::String(r.driver.clone()));
        custom.insert(
            "prepare_args".into(),
            with_config(&["prepare"], &["--concurrency".into(), n.to_string()]),
        );
        custom.insert(
            "prepare_exec_timeout".into(),
            Value::Integer(PREPARE_EXEC_TIMEOUT),
        );
        custom.insert("run_exec".into(), Value::String(r.driver.clone()));
        custom.insert("run_args".into(), with_config(&["run"], &[]));
        custom.insert("cleanup_exec".into(), Value::String(r.driver.clone()));
        custom.insert("cleanup_args".into(), with_config(&["cleanup"], &[]));
        custom.insert(
            "cleanup_exec_timeout".into(),
            Value::Integer(CLEANUP_EXEC_TIMEOUT),
        );
        custom.insert(
            "graceful_kill_timeout".into(),
            Value::Integer(GRACEFUL_KILL_TIMEOUT),
        );
        custom.insert(
            "force_kill_timeout".into(),
            Value::Integer(FORCE_KILL_TIMEOUT),
        );

        let mut flags = Table::new();
        flags.insert("FF_RESOLVE_FULL_TLS_CHAIN".into(), Value::Boolean(false));

        let mut t = Table::new();
        t.insert("name".into(), Value::String(r.name.clone()));
        t.insert("url".into(), Value::String(r.url.clone()));
        t.insert("token".into(), Value::String(token.0.clone()));
        t.insert("executor".into(), Value::String("custom".into()));
        t.insert("shell".into(), Value::String("bash".into()));
        t.insert("limit".into(), Value::Integer(r.limit.unwrap_or(n).into()));
        t.insert(
            "builds_dir".into(),
            Value::String(r.builds_dir.as_deref().unwrap_or(DEFAULT_BUILDS_DIR).into()),
        );
        t.insert(
            "cache_dir".into(),
            Value::String(r.cache_dir.as_deref().unwrap_or(DEFAULT_CACHE_DIR).into()),
        );
        if !r.environment.is_empty() {
            t.insert("environment".into(), strings(r.environment.iter().cloned()));
        }
        t.insert("feature_flags".into(), Value::Table(flags));
        t.insert("custom".into(), Value::Table(custom));
        merge(
            &mut t,
            map_to_table(&r.extra, &format!("runners[{i}].extra"))?,
        );
        runners.push(Value::Table(t));
    }
    top.insert("runners".into(), Value::Array(runners));

    let body = toml::to_string(&top).context(
        "cannot render config.toml (an extra value has a shape TOML cannot express); simplify the extra keys",
    )?;
    Ok(format!(
        "# Generated by `gitlab-runner-tart-driver runner-config --spec {}`.\n# Do not edit: changes are overwritten the next time it runs.\n\n{body}",
        spec_path.display()
    ))
}
