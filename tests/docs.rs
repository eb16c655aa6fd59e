//! The documentation's examples work: the driver config in the README loads.

use std::process::Command;

const DRIVER: &str = env!("CARGO_BIN_EXE_gitlab-runner-tart-driver");

/// Fenced ```yaml blocks of the README that are driver configs.
fn readme_driver_configs() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.starts_with("# driver config"))
        .map(String::from)
        .collect()
}

#[test]
fn the_readme_driver_config_loads_and_sets_the_guest_paths() {
    let configs = readme_driver_configs();
    assert!(
        !configs.is_empty(),
        "no driver config example in the README"
    );
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let out = config_stage(dir.path(), &config);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["builds_dir"], "/tmp/builds");
    }
}

#[test]
fn every_subcommand_has_help_that_names_its_options() {
    for sub in ["config", "prepare", "run", "cleanup", "gc", "doctor"] {
        let out = Command::new(DRIVER).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("--tart-executable"),
            "{sub} --help lacks the admin options"
        );
    }
}

#[test]
fn the_readme_orchard_config_loads_with_its_token_file_in_place() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let config = readme
        .split("```yaml\n")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.starts_with("# orchard driver config"))
        .expect("no Orchard driver config example in the README");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok\n").unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "pw\n").unwrap();
    let config = config
        .replace("/etc/gitlab-runner/orchard-token", token.to_str().unwrap())
        .replace(
            "/etc/gitlab-runner-tart-driver/guest-password",
            password.to_str().unwrap(),
        );
    config_stage(dir.path(), &config);
}

/// The config stage with `config` as its YAML file (written into `dir`); it must succeed.
fn config_stage(dir: &std::path::Path, config: &str) -> std::process::Output {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(DRIVER)
        .args(["config", "--config"])
        .arg(&path)
        .env_remove("TART_DRIVER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{config}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
