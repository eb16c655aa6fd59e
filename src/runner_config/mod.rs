//! `runner-config`: renders GitLab Runner's `config.toml` from a declarative spec. May use:
//! nothing of the driver's own layers; it is a command of its own.
//!
//! The spec (JSON) names every runner with the *path* of the file that holds its
//! authentication token, never the token itself, so it can live in a world-readable place
//! such as the Nix store. This command reads the token files, then writes a complete
//! `config.toml` atomically (temporary file in the same directory, fsync, rename) with mode
//! 0600. The nix-darwin module runs it each time the runner's launch agent starts; users
//! without Nix run it by hand.
//!
//! Every runner gets `executor = "custom"`, `shell = "bash"` and a `[runners.custom]` table
//! whose `*_exec` is the driver and whose `prepare_args` carry `--concurrency N` with the
//! same N as the global `concurrent`, so the two can never drift apart.
//!
//! [`spec`] reads and checks the spec, [`token`] the token files, [`render`] writes the
//! TOML and [`write`] puts it in place.

mod render;
mod spec;
mod token;
mod write;

use std::path::PathBuf;

use anyhow::Result;

use render::render;
use spec::load_spec;
use token::read_token;
use write::write_atomically;

/// Render GitLab Runner's config.toml from a spec file and the runners' token files.
///
/// The spec is JSON: {"concurrent": 2, "check_interval": 3, "shutdown_timeout": 30,
/// "log_level": "info", "runners": [{"name": "mac-1", "url": "https://gitlab.example.com",
/// "token_file": "/Users/ci/.gitlab-runner/mac-1.token", "limit": 2,
/// "driver": "/path/to/gitlab-runner-tart-driver", "driver_config": "/path/to/driver.yaml",
/// "concurrency": 2, "builds_dir": "/var/tmp/builds", "cache_dir": "/var/tmp/cache",
/// "environment": ["FOO=bar"], "extra": {<keys merged into this [[runners]] table>}}],
/// "extra": {<keys merged into the top level>}}. Each token file holds one runner
/// authentication token (glrt-…). The output is replaced atomically and has mode 0600.
#[derive(clap::Args, Debug)]
pub struct RunnerConfigArgs {
    /// The spec file (JSON) describing the runners; it holds token file paths, not tokens.
    #[arg(long, value_name = "SPEC.json")]
    pub spec: PathBuf,
    /// Where to write config.toml; its directory must exist and be writable.
    #[arg(long, value_name = "CONFIG.toml")]
    pub output: PathBuf,
}

/// Runs the subcommand: validate the spec, read the tokens, write config.toml.
pub fn execute(args: &RunnerConfigArgs) -> Result<()> {
    let spec = load_spec(&args.spec)?;
    let mut tokens = Vec::with_capacity(spec.runners.len());
    for runner in &spec.runners {
        let (token, warning) = read_token(runner)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        tokens.push(token);
    }
    let text = render(&spec, &tokens, &args.spec)?;
    write_atomically(&args.output, text.as_bytes())?;
    eprintln!(
        "wrote {} ({} runner{}, concurrent = {})",
        args.output.display(),
        spec.runners.len(),
        if spec.runners.len() == 1 { "" } else { "s" },
        spec.concurrent
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use toml::{Table, Value};

    use super::render::{DEFAULT_BUILDS_DIR, DEFAULT_CACHE_DIR};
    use super::spec::Spec;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "glrt-SECRET-abc123xyz";

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            fs::write(&p, text).unwrap();
            p
        }
        fn args(&self, spec: &serde_json::Value) -> RunnerConfigArgs {
            RunnerConfigArgs {
                spec: self.write("spec.json", &spec.to_string()),
                output: self.path("config.toml"),
            }
        }
        fn run(&self, spec: &serde_json::Value) -> Result<Table> {
            let args = self.args(spec);
            execute(&args)?;
            let text = fs::read_to_string(&args.output).unwrap();
            Ok(toml::from_str(&text).expect("output parses as TOML"))
        }
    }

    fn spec(f: &Fixture) -> serde_json::Value {
        let token_file = f.write("mac-1.token", &format!("  {TOKEN}\n"));
        serde_json::json!({
            "concurrent": 2,
            "check_interval": 5,
            "runners": [{
                "name": "mac-1",
                "url": "https://gitlab.example.com",
                "token_file": token_file,
                "driver": "/opt/bin/gitlab-runner-tart-driver",
                "driver_config": "/etc/tart-driver.yaml",
            }]
        })
    }

    fn runner(t: &Table, i: usize) -> &Table {
        t["runners"].as_array().unwrap()[i].as_table().unwrap()
    }

    fn strs(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    #[test]
    fn renders_a_complete_runner() {
        let f = Fixture::new();
        let t = f.run(&spec(&f)).unwrap();
        assert_eq!(t["concurrent"].as_integer(), Some(2));
        assert_eq!(t["check_interval"].as_integer(), Some(5));
        assert!(!t.contains_key("shutdown_timeout"));
        let r = runner(&t, 0);
        assert_eq!(r["name"].as_str(), Some("mac-1"));
        assert_eq!(r["url"].as_str(), Some("https://gitlab.example.com"));
        assert_eq!(r["token"].as_str(), Some(TOKEN), "token is trimmed");
        assert_eq!(r["executor"].as_str(), Some("custom"));
        assert_eq!(r["shell"].as_str(), Some("bash"));
        assert_eq!(
            r["limit"].as_integer(),
            Some(2),
            "limit defaults to concurrent"
        );
        assert_eq!(r["builds_dir"].as_str(), Some(DEFAULT_BUILDS_DIR));
        assert_eq!(r["cache_dir"].as_str(), Some(DEFAULT_CACHE_DIR));
        assert!(!r.contains_key("environment"));
        assert_eq!(
            r["feature_flags"]["FF_RESOLVE_FULL_TLS_CHAIN"].as_bool(),
            Some(false)
        );
        let c = r["custom"].as_table().unwrap();
        for stage in ["config", "prepare", "run", "cleanup"] {
            assert_eq!(
                c[&format!("{stage}_exec")].as_str(),
                Some("/opt/bin/gitlab-runner-tart-driver")
            );
        }
        assert_eq!(
            strs(&c["config_args"]),
            ["config", "--config", "/etc/tart-driver.yaml"]
        );
        assert_eq!(
            strs(&c["prepare_args"]),
            [
                "prepare",
                "--config",
                "/etc/tart-driver.yaml",
                "--concurrency",
                "2"
            ]
        );
        assert_eq!(
            strs(&c["run_args"]),
            ["run", "--config", "/etc/tart-driver.yaml"]
        );
        assert_eq!(
            strs(&c["cleanup_args"]),
            ["cleanup", "--config", "/etc/tart-driver.yaml"]
        );
        assert_eq!(c["config_exec_timeout"].as_integer(), Some(300));
        assert_eq!(c["prepare_exec_timeout"].as_integer(), Some(3600));
        assert_eq!(c["cleanup_exec_timeout"].as_integer(), Some(600));
        assert_eq!(c["graceful_kill_timeout"].as_integer(), Some(120));
        assert_eq!(c["force_kill_timeout"].as_integer(), Some(30));
    }

    #[test]
    fn every_option_is_rendered() {
        let f = Fixture::new();
        let t1 = f.write("a.token", TOKEN);
        let t2 = f.write("b.token", "glrt-other\n");
        let s = serde_json::json!({
            "concurrent": 2,
            "shutdown_timeout": 45,
            "log_level": "debug",
            "extra": { "listen_address": ":9252", "session_server": { "session_timeout": 600 } },
            "runners": [
                {
                    "name": "a", "url": "https://a.example", "token_file": t1, "limit": 1,
                    "executor": "custom", "driver": "/d", "driver_config": "/a.yaml",
                    "concurrency": 2, "builds_dir": "/b", "cache_dir": "/c",
                    "environment": ["FOO=bar", "X=1"],
                    "extra": {
                        "request_concurrency": 2,
                        "output_limit": 8192,
                        "custom": { "prepare_exec_timeout": 1800 },
                        "feature_flags": { "FF_X": true },
                        "ratio": 0.5
                    }
                },
                { "name": "b", "url": "http://b.example", "token_file": t2, "driver": "/d" }
            ]
        });
        let t = f.run(&s).unwrap();
        assert_eq!(t["check_interval"].as_integer(), Some(3), "default");
        assert_eq!(t["shutdown_timeout"].as_integer(), Some(45));
        assert_eq!(t["log_level"].as_str(), Some("debug"));
        assert_eq!(t["listen_address"].as_str(), Some(":9252"));
        assert_eq!(
            t["session_server"]["session_timeout"].as_integer(),
            Some(600)
        );
        let a = runner(&t, 0);
        assert_eq!(a["limit"].as_integer(), Some(1));
        assert_eq!(a["builds_dir"].as_str(), Some("/b"));
        assert_eq!(a["cache_dir"].as_str(), Some("/c"));
        assert_eq!(strs(&a["environment"]), ["FOO=bar", "X=1"]);
        assert_eq!(a["request_concurrency"].as_integer(), Some(2));
        assert_eq!(a["output_limit"].as_integer(), Some(8192));
        assert_eq!(a["ratio"].as_float(), Some(0.5));
        assert_eq!(
            a["custom"]["prepare_exec_timeout"].as_integer(),
            Some(1800),
            "extra overrides a default"
        );
        assert_eq!(
            a["custom"]["run_exec"].as_str(),
            Some("/d"),
            "deep merge keeps the rest"
        );
        assert_eq!(a["feature_flags"]["FF_X"].as_bool(), Some(true));
        assert_eq!(
            a["feature_flags"]["FF_RESOLVE_FULL_TLS_CHAIN"].as_bool(),
            Some(false)
        );
        let b = runner(&t, 1);
        assert_eq!(b["token"].as_str(), Some("glrt-other"));
        assert_eq!(b["url"].as_str(), Some("http://b.example"));
        let c = b["custom"].as_table().unwrap();
        assert_eq!(strs(&c["config_args"]), ["config"], "no driver_config");
        assert_eq!(strs(&c["prepare_args"]), ["prepare", "--concurrency", "2"]);
    }

    #[test]
    fn output_has_mode_0600_and_replaces_an_old_file() {
        let f = Fixture::new();
        let out = f.write("config.toml", "old");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        f.run(&spec(&f)).unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let entries: Vec<_> = fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !entries.iter().any(|e| e.contains(".tmp-")),
            "no temp file left: {entries:?}"
        );
    }

    fn err_of(f: &Fixture, s: &serde_json::Value) -> String {
        let args = f.args(s);
        let e = execute(&args).unwrap_err();
        format!("{e:#}")
    }

    #[test]
    fn missing_token_file_is_a_clear_error_and_writes_nothing() {
        let f = Fixture::new();
        let out = f.write("config.toml", "previous contents");
        let mut s = spec(&f);
        s["runners"][0]["token_file"] = serde_json::json!(f.path("absent.token"));
        let e = err_of(&f, &s);
        assert!(e.contains("cannot read token file"), "{e}");
        assert!(e.contains("absent.token"), "{e}");
        assert!(e.contains("mac-1"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert_eq!(fs::read_to_string(out).unwrap(), "previous contents");
    }

    #[test]
    fn unreadable_token_file_is_a_clear_error() {
        let f = Fixture::new();
        let mut s = spec(&f);
        // A directory cannot be read as a file, even by root.
        s["runners"][0]["token_file"] = serde_json::json!(f.dir.path());
        let e = err_of(&f, &s);
        assert!(e.contains("cannot read token file"), "{e}");
        assert!(!f.path("config.toml").exists());
    }

    #[test]
    fn empty_or_malformed_token_is_rejected() {
        let f = Fixture::new();
        let mut s = spec(&f);
        s["runners"][0]["token_file"] = serde_json::json!(f.write("empty", " \n\t\n"));
        let e = err_of(&f, &s);
        assert!(e.contains("is empty"), "{e}");
        s["runners"][0]["token_file"] = serde_json::json!(f.write("two", "glrt-a glrt-b\n"));
        let e = err_of(&f, &s);
        assert!(e.contains("whitespace"), "{e}");
        assert!(!e.contains("glrt-a"), "secret not printed: {e}");
        assert!(!f.path("config.toml").exists());
    }

    #[test]
    fn token_without_glrt_prefix_warns_but_works() {
        let f = Fixture::new();
        let mut s = spec(&f);
        s["runners"][0]["token_file"] = serde_json::json!(f.write("legacy", "abcdef\n"));
        let r = &serde_json::from_value::<Spec>(s.clone()).unwrap().runners[0];
        let (token, warning) = read_token(r).unwrap();
        let w = warning.expect("a warning");
        assert!(w.contains("does not start with glrt-"), "{w}");
        assert!(!w.contains("abcdef"), "secret not printed: {w}");
        assert_eq!(format!("{token:?} {token}"), "Token(<redacted>) <redacted>");
        let t = f.run(&s).unwrap();
        assert_eq!(runner(&t, 0)["token"].as_str(), Some("abcdef"));
    }

    #[test]
    fn bad_spec_errors_name_the_problem() {
        let f = Fixture::new();
        let args = RunnerConfigArgs {
            spec: f.write("spec.json", "{ not json"),
            output: f.path("config.toml"),
        };
        let e = format!("{:#}", execute(&args).unwrap_err());
        assert!(e.contains("is not a valid runner spec"), "{e}");
        assert!(e.contains("line 1"), "{e}");

        let args = RunnerConfigArgs {
            spec: f.path("nope.json"),
            output: f.path("config.toml"),
        };
        let e = format!("{:#}", execute(&args).unwrap_err());
        assert!(e.contains("cannot read spec file"), "{e}");

        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("concurrent", serde_json::json!(0), "concurrent is 0"),
            (
                "concurent",
                serde_json::json!(2),
                "unknown field `concurent`",
            ),
            ("runners", serde_json::json!([]), "runners is empty"),
            (
                "extra",
                serde_json::json!({"concurrent": 3}),
                "extra.concurrent is not allowed",
            ),
            ("extra", serde_json::json!({"x": null}), "extra.x is null"),
        ];
        for (key, value, want) in cases {
            let mut s = spec(&f);
            s[key] = value.clone();
            let e = err_of(&f, &s);
            assert!(e.contains(want), "{key}: {e}");
        }
        let runner_cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "url",
                serde_json::json!("gitlab.example.com"),
                "not an http(s) URL",
            ),
            (
                "executor",
                serde_json::json!("docker"),
                "executor \"docker\"",
            ),
            (
                "concurrency",
                serde_json::json!(3),
                "differs from concurrent 2",
            ),
            ("limit", serde_json::json!(0), "limit 0"),
            ("name", serde_json::json!(" "), "empty name"),
            ("driver", serde_json::json!(""), "driver is empty"),
            ("builds_dir", serde_json::json!(""), "must not be empty"),
            (
                "extra",
                serde_json::json!({"token": "glrt-x"}),
                "extra.token is not allowed",
            ),
            (
                "tokenfile",
                serde_json::json!("/x"),
                "unknown field `tokenfile`",
            ),
        ];
        for (key, value, want) in runner_cases {
            let mut s = spec(&f);
            s["runners"][0][key] = value.clone();
            let e = err_of(&f, &s);
            assert!(e.contains(want), "{key}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(!f.path("config.toml").exists());
    }

    #[test]
    fn unwritable_output_fails_cleanly_without_leaking_the_token() {
        let f = Fixture::new();
        let s = spec(&f);
        let mut args = f.args(&s);
        args.output = f.path("no-such-dir/config.toml");
        let e = format!("{:#}", execute(&args).unwrap_err());
        assert!(e.contains("cannot write"), "{e}");
        assert!(e.contains("no-such-dir"), "{e}");
        assert!(!e.contains(TOKEN), "secret not printed: {e}");

        // Output path is an existing directory: rename fails after the temp file was
        // written; the temp file must be gone and the directory untouched.
        let target = f.path("config-dir");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        args.output = target.clone();
        let e = format!("{:#}", execute(&args).unwrap_err());
        assert!(e.contains("renaming"), "{e}");
        assert!(!e.contains(TOKEN), "secret not printed: {e}");
        assert!(target.join("keep").exists());
        let leftovers: Vec<_> = fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn token_is_only_in_the_output() {
        let f = Fixture::new();
        let s = spec(&f);
        let args = f.args(&s);
        let dbg = format!("{args:?}");
        assert!(!dbg.contains(TOKEN));
        let parsed: Spec = serde_json::from_value(s).unwrap();
        let tokens = vec![read_token(&parsed.runners[0]).unwrap().0];
        assert!(!format!("{parsed:?} {tokens:?}").contains(TOKEN));
        let text = render(&parsed, &tokens, &args.spec).unwrap();
        assert_eq!(text.matches(TOKEN).count(), 1);
    }

    #[test]
    fn output_is_valid_toml_with_awkward_strings() {
        let f = Fixture::new();
        let mut s = spec(&f);
        s["runners"][0]["name"] = serde_json::json!("mac \"one\"\n\\ é");
        s["runners"][0]["environment"] = serde_json::json!(["A=\"quoted\" $HOME", "B=x\ty"]);
        let t = f.run(&s).unwrap();
        let r = runner(&t, 0);
        assert_eq!(r["name"].as_str(), Some("mac \"one\"\n\\ é"));
        assert_eq!(strs(&r["environment"]), ["A=\"quoted\" $HOME", "B=x\ty"]);
    }

    #[test]
    fn cli_parses_the_two_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RunnerConfigArgs,
        }
        let cli = Cli::try_parse_from(["x", "--spec", "/s.json", "--output", "/o.toml"]).unwrap();
        assert_eq!(cli.args.spec, PathBuf::from("/s.json"));
        assert_eq!(cli.args.output, PathBuf::from("/o.toml"));
        assert!(Cli::try_parse_from(["x", "--spec", "/s.json"]).is_err());
    }
}
