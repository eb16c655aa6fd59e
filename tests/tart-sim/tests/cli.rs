//! Outputs, exit codes and on-disk state of the simulator's non-booting commands, against
//! the Tart 2.35 spec (../shared/spec/tart-cli.md).

mod common;
use common::*;

#[test]
fn version_prints_only_the_version() {
    let b = Bed::new();
    let o = b.tart(&["--version"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "2.35.0\n"));
}

#[test]
fn get_of_a_missing_vm_is_a_bare_message_with_exit_2() {
    let b = Bed::new();
    let o = b.tart(&["get", "missing"]);
    assert_eq!(o.code, 2);
    assert_eq!(o.stderr, "the specified VM \"missing\" does not exist\n");
    assert_eq!(o.stdout, "");
}

#[test]
fn run_of_a_missing_vm_is_an_error_prefixed_message_with_exit_1() {
    let b = Bed::new();
    let o = b.tart(&["run", "missing"]);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Error: the specified VM \"missing\" does not exist\n"
    );
}

#[test]
fn ip_exec_stop_set_delete_of_a_missing_vm_exit_2() {
    let b = Bed::new();
    for args in [
        vec!["ip", "nope"],
        vec!["exec", "nope", "true"],
        vec!["stop", "nope"],
        vec!["set", "nope", "--cpu", "4"],
        vec!["delete", "nope"],
        vec!["clone", "nope", "x"],
    ] {
        let o = b.tart(&args);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (2, "the specified VM \"nope\" does not exist\n"),
            "{args:?}"
        );
    }
}

#[test]
fn an_oci_name_is_not_a_local_vm_for_get() {
    let b = Bed::new();
    b.ok(&["pull", UBUNTU]);
    let o = b.tart(&["get", UBUNTU]);
    assert_eq!(o.code, 2);
}

#[test]
fn bad_enum_value_is_a_usage_error_with_exit_64() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.tart(&["get", "vm", "--format", "xml"]);
    assert_eq!(o.code, 64);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines[0], "Error: The value 'xml' is invalid for '--format <format>'. Please provide one of 'text' and 'json'.");
    assert_eq!(lines[1], "Usage: tart get <name> [--format <format>]");
    assert_eq!(lines[2], "  See 'tart get --help' for more information.");
}

#[test]
fn unknown_option_and_missing_argument_are_usage_errors() {
    let b = Bed::new();
    let o = b.tart(&["list", "--bogus"]);
    assert_eq!(o.code, 64);
    assert!(
        o.stderr
            .starts_with("Error: Unknown option '--bogus'\nUsage: tart list"),
        "{}",
        o.stderr
    );
    let o = b.tart(&["get"]);
    assert_eq!(o.code, 64);
    assert!(
        o.stderr
            .starts_with("Error: Missing expected argument '<name>'\n"),
        "{}",
        o.stderr
    );
}

#[test]
fn list_with_an_invalid_source_is_a_usage_error() {
    let b = Bed::new();
    let o = b.tart(&["list", "--source", "remote"]);
    assert_eq!(o.code, 64);
    assert!(
        o.stderr
            .starts_with("Error: 'remote' is not a valid <source>\n"),
        "{}",
        o.stderr
    );
}

#[test]
fn clone_to_a_remote_looking_name_is_a_usage_error() {
    let b = Bed::new();
    let o = b.tart(&["clone", UBUNTU, "ghcr.io/x/y"]);
    assert_eq!(o.code, 64);
    assert!(
        o.stderr
            .starts_with("Error: <new-name> should be a local name\n"),
        "{}",
        o.stderr
    );
    assert!(o
        .stderr
        .ends_with("  See 'tart clone --help' for more information.\n"));
}

#[test]
fn clone_with_zero_concurrency_is_a_usage_error() {
    let b = Bed::new();
    let o = b.tart(&["clone", "--concurrency", "0", UBUNTU, "x"]);
    assert_eq!(o.code, 64);
    assert!(o
        .stderr
        .starts_with("Error: network concurrency cannot be less than 1\n"));
}

#[test]
fn pull_prints_plain_percent_lines_with_ci() {
    let b = Bed::new();
    let o = b.ok(&["pull", MAC_BASE]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], format!("pulling {MAC_BASE}..."));
    assert_eq!(lines[1], "pulling manifest...");
    assert_eq!(lines[2], "pulling disk (25.3 GB compressed)...");
    assert_eq!(lines[3], "0%");
    assert_eq!(lines[lines.len() - 2], "100%");
    assert_eq!(lines[lines.len() - 1], "pulling NVRAM...");
    for l in &lines[3..lines.len() - 1] {
        assert!(
            l.ends_with('%') && l[..l.len() - 1].parse::<u32>().is_ok(),
            "{l}"
        );
    }
}

#[test]
fn pull_without_ci_redraws_with_ansi_escapes() {
    let b = Bed::new();
    let mut c = b.cmd(&["pull", MAC_BASE]);
    c.env_remove("CI");
    let o: Out = c.output().unwrap().into();
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("\x1b[1A"), "{:?}", o.stdout);
}

#[test]
fn pull_of_a_cached_tag_says_already_cached_and_linked() {
    let b = Bed::new();
    b.ok(&["pull", UBUNTU]);
    let o = b.ok(&["pull", UBUNTU]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[1], "pulling manifest...");
    assert!(
        lines[2].starts_with("ghcr.io/cirruslabs/ubuntu@sha256:"),
        "{}",
        lines[2]
    );
    assert!(lines[2].ends_with(" image is already cached and linked!"));
}

#[test]
fn pull_of_a_local_vm_name_has_nothing_to_pull() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.ok(&["pull", "vm"]);
    assert_eq!(o.stdout, "\"vm\" is a local image, nothing to pull here!\n");
}

#[test]
fn pull_of_an_unknown_image_is_a_registry_404() {
    let b = Bed::new();
    let o = b.tart(&["pull", "ghcr.io/nobody/nothing:latest"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with(
            "Error: UnexpectedHTTPStatusCode(when: \"pulling manifest\", code: 404, details: "
        ),
        "{}",
        o.stderr
    );
}

const AUTH_CAT: &str = r#"{"images": {"registry.example.com:5000/team/private:1.0": {"os": "linux", "pull_ms": 10, "registry_auth": {"username": "u", "password": "p"}}}}"#;
const PRIVATE: &str = "registry.example.com:5000/team/private:1.0";

#[test]
fn pull_needing_credentials_fails_with_auth_failed_without_them() {
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let o = b.tart(&["pull", PRIVATE]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .starts_with("Error: AuthFailed(why: \"received unexpected HTTP status code 401"),
        "{}",
        o.stderr
    );
}

#[test]
fn pull_uses_tart_registry_env_credentials() {
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let o = b.tart_env(
        &["pull", PRIVATE],
        &[
            ("TART_REGISTRY_USERNAME", "u"),
            ("TART_REGISTRY_PASSWORD", "p"),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Wrong password
    let b2 = Bed::new();
    b2.catalogue(AUTH_CAT);
    let o = b2.tart_env(
        &["pull", PRIVATE],
        &[
            ("TART_REGISTRY_USERNAME", "u"),
            ("TART_REGISTRY_PASSWORD", "x"),
        ],
    );
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("AuthFailed"));
}

#[test]
fn registry_env_credentials_need_both_variables() {
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let o = b.tart_env(&["pull", PRIVATE], &[("TART_REGISTRY_USERNAME", "u")]);
    assert_eq!(o.code, 1);
}

#[test]
fn registry_hostname_scopes_env_credentials_including_port() {
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let creds = [
        ("TART_REGISTRY_USERNAME", "u"),
        ("TART_REGISTRY_PASSWORD", "p"),
    ];
    let mut env = creds.to_vec();
    env.push(("TART_REGISTRY_HOSTNAME", "registry.example.com"));
    assert_eq!(b.tart_env(&["pull", PRIVATE], &env).code, 1);
    env.pop();
    env.push(("TART_REGISTRY_HOSTNAME", "registry.example.com:5000"));
    assert_eq!(b.tart_env(&["pull", PRIVATE], &env).code, 0);
}

#[test]
fn registry_refusing_credentials_fails_even_with_the_right_ones() {
    let b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/a/b:latest": {"os": "linux", "registry_auth": {"username": "u", "password": "p"}, "faults": {"pull_refuses_credentials": true}}}}"#);
    let o = b.tart_env(
        &["pull", "r.io/a/b:latest"],
        &[
            ("TART_REGISTRY_USERNAME", "u"),
            ("TART_REGISTRY_PASSWORD", "p"),
        ],
    );
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("Error: AuthFailed("), "{}", o.stderr);
}

#[test]
fn failing_pull_retries_then_exits_1_and_caches_nothing() {
    let b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/a/b:latest": {"os": "linux", "pull_ms": 100, "faults": {"pull_fails": true}}}}"#);
    let o = b.tart(&["pull", "r.io/a/b:latest"]);
    assert_eq!(o.code, 1);
    assert_eq!(o.stdout.matches("attempting to re-try...").count(), 5);
    assert!(o.stderr.starts_with("Error: "));
    let l = b.ok(&["list", "--source", "oci", "-q"]);
    assert_eq!(l.stdout, "");
}

#[test]
fn clone_of_an_uncached_image_pulls_without_the_first_line() {
    let b = Bed::new();
    let o = b.ok(&["clone", UBUNTU, "vm"]);
    assert_eq!(o.stdout.lines().next(), Some("pulling manifest..."));
    assert!(o.stdout.contains("100%"));
    // Cached: nothing printed, nothing refreshed.
    let o = b.ok(&["clone", UBUNTU, "vm2"]);
    assert_eq!(o.stdout, "");
}

#[test]
fn clone_does_not_refresh_a_cached_latest() {
    let b = Bed::new();
    b.ok(&["pull", UBUNTU]);
    let before = b.ok(&["list", "--source", "oci", "-q"]).stdout;
    // The registry's image changes (new digest) ...
    b.catalogue(&STD_CATALOGUE.replace("\"disk_gb\": 20", "\"disk_gb\": 21"));
    b.ok(&["clone", UBUNTU, "vm"]);
    assert_eq!(b.ok(&["list", "--source", "oci", "-q"]).stdout, before);
    // ... and only an explicit pull updates the tag.
    b.ok(&["pull", UBUNTU]);
    assert_ne!(b.ok(&["list", "--source", "oci", "-q"]).stdout, before);
}

#[test]
fn vm_layout_has_tart_files_and_config_keys() {
    let b = Bed::new();
    b.clone_vm(MAC_BASE, "vm");
    let d = b.vm_dir("vm");
    for f in ["config.json", "disk.img", "nvram.bin"] {
        assert!(d.join(f).exists(), "{f}");
    }
    let cfg = json(&std::fs::read_to_string(d.join("config.json")).unwrap());
    for k in [
        "version",
        "os",
        "arch",
        "cpuCountMin",
        "cpuCount",
        "memorySizeMin",
        "memorySize",
        "macAddress",
        "display",
        "diskFormat",
        "ecid",
        "hardwareModel",
    ] {
        assert!(cfg.get(k).is_some(), "{k} missing in {cfg}");
    }
    assert_eq!(cfg["memorySize"], 8192u64 * 1024 * 1024);
    let link = b
        .home
        .join("cache/OCIs/ghcr.io/cirruslabs/macos-tahoe-base/latest");
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.to_string_lossy().starts_with("sha256:"));
    let ddir = link.parent().unwrap().join(target);
    for f in ["config.json", "disk.img", "nvram.bin", "manifest.json"] {
        assert!(ddir.join(f).exists(), "{f}");
    }
    let lcfg = json(
        &std::fs::read_to_string(
            b.home
                .join("cache/OCIs/ghcr.io/cirruslabs/ubuntu")
                .join("latest/config.json"),
        )
        .unwrap_or_else(|_| {
            b.ok(&["pull", UBUNTU]);
            std::fs::read_to_string(
                b.home
                    .join("cache/OCIs/ghcr.io/cirruslabs/ubuntu/latest/config.json"),
            )
            .unwrap()
        }),
    );
    assert!(lcfg.get("ecid").is_none() && lcfg.get("hardwareModel").is_none());
}

fn mac_of(b: &Bed, vm: &str) -> String {
    json(&std::fs::read_to_string(b.vm_dir(vm).join("config.json")).unwrap())["macAddress"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn clone_keeps_the_image_mac_first_and_remacs_on_collision() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "one");
    b.clone_vm(UBUNTU, "two");
    assert_ne!(mac_of(&b, "one"), mac_of(&b, "two"));
    let img = json(
        &std::fs::read_to_string(
            b.home
                .join("cache/OCIs/ghcr.io/cirruslabs/ubuntu/latest/config.json"),
        )
        .unwrap(),
    );
    assert_eq!(img["macAddress"].as_str().unwrap(), mac_of(&b, "one"));
}

#[test]
fn clone_silently_overwrites_an_existing_vm() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    b.ok(&["set", "vm", "--cpu", "7"]);
    let o = b.ok(&["clone", MAC_BASE, "vm"]);
    assert!(!o.stdout.contains("exists"));
    let g = json(&b.ok(&["get", "vm", "--format", "json"]).stdout);
    assert_eq!(g["OS"], "darwin");
    assert_eq!(g["CPU"], 4);
}

#[test]
fn clone_failing_for_lack_of_disk_leaves_nothing_behind() {
    let b = Bed::new();
    b.catalogue(r#"{"images": {"r.io/a/b:latest": {"os": "darwin", "pull_ms": 10, "faults": {"clone_fails_disk": true}}}}"#);
    let o = b.tart(&["clone", "r.io/a/b:latest", "vm"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("Error: ") && o.stderr.contains("No space left on device"),
        "{}",
        o.stderr
    );
    assert!(!b.vm_dir("vm").exists());
    assert_eq!(std::fs::read_dir(b.home.join("tmp")).unwrap().count(), 0);
}

#[test]
fn list_json_is_pretty_with_space_before_colon_and_capitalised_keys() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.ok(&["list", "--format", "json"]);
    assert!(o.stdout.starts_with("[\n  {\n    \""), "{}", o.stdout);
    assert!(o.stdout.contains("\"Name\" : \"vm\""));
    let v = json(&o.stdout);
    let local: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Source"] == "local")
        .collect();
    assert_eq!(local.len(), 1);
    let e = local[0];
    assert_eq!(e["State"], "stopped");
    assert_eq!(e["Running"], false);
    assert_eq!(e["Disk"], 20);
    assert!(e["Size"].is_u64());
    assert!(e["Accessed"].as_str().unwrap().ends_with('Z'));
    let oci: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Source"] == "OCI")
        .collect();
    assert_eq!(oci.len(), 2, "tag and digest entries");
}

#[test]
fn list_text_is_a_padded_table_and_quiet_lists_names() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.ok(&["list", "--source", "local"]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "Source Name Disk Size Accessed     State  ");
    assert!(lines[1].starts_with("local  vm   20   0    "));
    assert!(lines[1].ends_with(" stopped"));
    assert_eq!(b.ok(&["list", "-q", "--source", "local"]).stdout, "vm\n");
}

#[test]
fn empty_list_prints_an_empty_line() {
    let b = Bed::new();
    assert_eq!(b.ok(&["list"]).stdout, "\n");
    assert_eq!(b.ok(&["list", "-q"]).stdout, "");
}

#[test]
fn get_json_has_size_as_a_string_and_memory_in_mib() {
    let b = Bed::new();
    b.clone_vm(MAC_BASE, "vm");
    let v = json(&b.ok(&["get", "vm", "--format", "json"]).stdout);
    assert!(v["Size"].is_string());
    assert_eq!(v["Memory"], 8192);
    assert_eq!(v["CPU"], 4);
    assert_eq!(v["Disk"], 50);
    assert_eq!(v["DiskFormat"], "raw");
    assert_eq!(v["Display"], "1024x768");
    assert_eq!(v["OS"], "darwin");
    assert_eq!(v["State"], "stopped");
    assert_eq!(v["Running"], false);
    let t = b.ok(&["get", "vm"]).stdout;
    assert!(t.starts_with("OS     CPU Memory Disk DiskFormat Size  Display  State  \ndarwin 4   8192   50   raw        "), "{t:?}");
}

#[test]
fn set_changes_config_and_clears_display_refit_without_its_flag() {
    let b = Bed::new();
    b.clone_vm(MAC_BASE, "vm");
    b.ok(&[
        "set",
        "vm",
        "--cpu",
        "6",
        "--memory",
        "16384",
        "--display",
        "1920x1080px",
        "--display-refit",
    ]);
    let cfg = json(&std::fs::read_to_string(b.vm_dir("vm").join("config.json")).unwrap());
    assert_eq!(cfg["cpuCount"], 6);
    assert_eq!(cfg["memorySize"], 16384u64 * 1024 * 1024);
    assert_eq!(cfg["displayRefit"], true);
    assert_eq!(
        json(&b.ok(&["get", "vm", "--format", "json"]).stdout)["Display"],
        "1920x1080px"
    );
    b.ok(&["set", "vm", "--cpu", "5"]);
    let cfg = json(&std::fs::read_to_string(b.vm_dir("vm").join("config.json")).unwrap());
    assert!(cfg.get("displayRefit").is_none());
}

#[test]
fn set_below_the_macos_minimum_fails_with_exit_1() {
    let b = Bed::new();
    b.clone_vm(MAC_BASE, "vm");
    let o = b.tart(&["set", "vm", "--cpu", "1"]);
    assert_eq!(o.code, 1);
    assert_eq!(o.stderr, "Error: LessThanMinimalResourcesError: VM should have 2 CPU cores at minimum (requested 1)\n");
}

#[test]
fn set_disk_size_grows_only() {
    let b = Bed::new();
    b.clone_vm(MAC_BASE, "vm");
    b.ok(&["set", "vm", "--disk-size", "80"]);
    assert_eq!(
        json(&b.ok(&["get", "vm", "--format", "json"]).stdout)["Disk"],
        80
    );
    let o = b.tart(&["set", "vm", "--disk-size", "60"]);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "new disk size of 60 GB should be larger than the current disk size of 80 GB\n"
    );
}

#[test]
fn set_random_mac_changes_the_mac() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let before = mac_of(&b, "vm");
    b.ok(&["set", "vm", "--random-mac"]);
    assert_ne!(before, mac_of(&b, "vm"));
}

#[test]
fn stop_of_a_stopped_vm_exits_2() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.tart(&["stop", "vm"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "VM \"vm\" is not running\n")
    );
}

#[test]
fn exec_on_a_stopped_vm_exits_2() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.tart(&["exec", "vm", "true"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "VM \"vm\" is not running\n")
    );
}

#[test]
fn delete_stops_at_the_first_failure() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "a");
    b.clone_vm(UBUNTU, "c");
    let o = b.tart(&["delete", "a", "missing", "c"]);
    assert_eq!(o.code, 2);
    assert!(!b.vm_dir("a").exists());
    assert!(b.vm_dir("c").exists());
}

#[test]
fn delete_of_an_oci_tag_collects_its_digest() {
    let b = Bed::new();
    b.ok(&["pull", UBUNTU]);
    b.ok(&["delete", UBUNTU]);
    assert_eq!(b.ok(&["list", "--source", "oci", "-q"]).stdout, "");
}

#[test]
fn ip_of_a_vm_that_never_ran_says_is_your_vm_running() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let t = std::time::Instant::now();
    let o = b.tart(&["ip", "vm"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "no IP address found, is your VM running?\n")
    );
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(900),
        "--wait 0 still sleeps 1 s"
    );
    let o = b.tart(&["ip", "vm", "--resolver", "agent"]);
    assert_eq!(o.stderr, "no IP address found, is your VM running? (also make sure that Guest agent for Tart is running inside of a VM)\n");
    let o = b.tart(&["ip", "vm", "--resolver", "arp"]);
    assert_eq!(o.stderr, "no IP address found, is your VM running? (not all Linux distributions are compatible with the ARP resolver)\n");
}

#[test]
fn ip_reports_a_malformed_lease_file_as_unexpected_format() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    std::fs::create_dir_all(b.host.join("var/db")).unwrap();
    std::fs::write(b.host.join("var/db/dhcpd_leases"), "garbage\n").unwrap();
    let o = b.tart(&["ip", "vm"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .starts_with("Error: UnexpectedFormat(name: \"unexpected DHCPD leases file format\""),
        "{}",
        o.stderr
    );
}

/// Tart compares `{` alone on its line: an indented one is refused (the driver's doctor
/// must flag what Tart refuses, not what a lenient reader forgives).
#[test]
fn ip_refuses_an_indented_lease_brace_as_tart_does() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    std::fs::create_dir_all(b.host.join("var/db")).unwrap();
    std::fs::write(
        b.host.join("var/db/dhcpd_leases"),
        "{\n\tip_address=192.168.64.2\n\thw_address=1,7a:47:bb:5f:97:c9\n\tlease=0x7fffffff\n}\n {\n",
    )
    .unwrap();
    let o = b.tart(&["ip", "vm"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("key-value pair with only a key") && o.stderr.contains("line: 6"),
        "{}",
        o.stderr
    );
}

#[test]
fn login_needs_username_and_password_stdin_together() {
    let b = Bed::new();
    let o = b.tart(&["login", "r.io", "--username", "u"]);
    assert_eq!(o.code, 64);
    assert!(o
        .stderr
        .starts_with("Error: both --username and --password-stdin are required\n"));
    let o = b.tart(&["login", "r.io", "--password-stdin"]);
    assert_eq!(o.code, 64);
}

#[test]
fn login_validates_and_keeps_no_secret_and_logout_forgets() {
    use std::io::Write;
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let host = "registry.example.com:5000";
    let login = |pw: &str| -> Out {
        let mut c = b.cmd(&["login", host, "--username", "u", "--password-stdin"]);
        let mut ch = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap().into()
    };
    let o = login("wrong");
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("invalid credentials: AuthFailed("),
        "{}",
        o.stderr
    );
    let o = login("p");
    assert_eq!((o.code, o.stdout.as_str()), (0, ""));
    let kc = std::fs::read_to_string(
        b.root
            .join("Library/Keychains/tart-sim-login-keychain.json"),
    )
    .unwrap();
    assert!(kc.contains(host) && !kc.contains("\"p\""), "{kc}");
    // The stored login works for pulls.
    b.ok(&["pull", PRIVATE]);
    b.ok(&["logout", host]);
    assert!(!std::fs::read_to_string(
        b.root
            .join("Library/Keychains/tart-sim-login-keychain.json")
    )
    .unwrap()
    .contains(host));
    b.ok(&["logout", host]);
}

/// macOS finds the login keychain through the user database: a `tart login` serves later
/// pulls whatever HOME says, and `security find-internet-password` sees it (no secret shown).
#[test]
fn the_keychain_is_found_through_the_user_database_whatever_home_says() {
    use std::io::Write;
    let b = Bed::new();
    b.catalogue(AUTH_CAT);
    let host = "registry.example.com:5000";
    let mut c = b.cmd(&["login", host, "--username", "u", "--password-stdin"]);
    let mut ch = c.stdin(std::process::Stdio::piped()).spawn().unwrap();
    ch.stdin.take().unwrap().write_all(b"p\n").unwrap();
    assert!(ch.wait().unwrap().success());
    let elsewhere = b.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = b.tart_env(
        &["pull", PRIVATE],
        &[
            ("HOME", elsewhere.to_str().unwrap()),
            ("CFFIXED_USER_HOME", elsewhere.to_str().unwrap()),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let security = b.root.join("security");
    std::os::unix::fs::symlink(TART, &security).unwrap();
    let find = |server: &str| {
        std::process::Command::new(&security)
            .args([
                "find-internet-password",
                "-s",
                server,
                "-l",
                "Tart Credentials",
            ])
            .env("TART_SIM_USER_HOME", &b.root)
            .env("HOME", &elsewhere)
            .output()
            .unwrap()
    };
    let found = find(host);
    assert_eq!(found.status.code(), Some(0));
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(
        text.contains("\"acct\"<blob>=\"u\"") && !text.contains("\"p\""),
        "{text}"
    );
    assert_eq!(find("ghcr.io").status.code(), Some(44));
}

#[test]
fn tmp_entries_are_garbage_collected_by_most_commands() {
    let b = Bed::new();
    let stale = b.home.join("tmp/stale");
    std::fs::create_dir_all(&stale).unwrap();
    // A fresh entry may be a clone's work directory between creation and locking.
    b.ok(&["list"]);
    assert!(stale.exists(), "a fresh entry was collected");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    b.ok(&["list"]);
    assert!(!stale.exists());
}

#[test]
fn run_validates_dir_shares_and_network_flags_as_usage_errors() {
    let b = Bed::new();
    b.clone_vm(UBUNTU, "vm");
    let o = b.tart(&["run", "vm", "--dir", "/tmp", "--dir", "/var"]);
    assert_eq!(o.code, 64);
    assert!(o.stderr.starts_with("Error: invalid --dir syntax: for multiple directory shares each one of them should be named\n"), "{}", o.stderr);
    let o = b.tart(&["run", "vm", "--net-host", "--net-softnet"]);
    assert_eq!(o.code, 64);
    assert!(o.stderr.starts_with(
        "Error: --net-bridged, --net-softnet and --net-host are mutually exclusive\n"
    ));
}
