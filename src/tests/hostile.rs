//! Property tests of every parser that reads input from a job, the admin or Tart: whatever
//! the input, a parser never panics, and whatever it accepts is safe to put on a Tart or
//! shell command line. The end-to-end side of hostile input is `tests/hostile.rs`.

use std::str::FromStr;

use proptest::prelude::*;

use crate::guest::quote;
use crate::host::tart::{ListEntry, VmInfo};
use crate::host::vm::VmName;
use crate::job::image::Image;
use crate::model::{PullPolicy, Resource, TransportKind};
use crate::settings::Options;
use crate::settings::{
    validate_guest_path, validate_shell, validate_user, Display, Settings, Volume,
};

/// Strings that lean towards the characters attacks are made of.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-a-z0-9./:=;|&$`'\" \\n\\t\\\\()*?<>@#%+,~!]{0,40}",
        "(--?[a-z-]{1,12}(=[^ ]{0,10})? ?){1,3}",
    ]
}

fn has_shell_meta(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "$`'\";|&<>(){}\\*?!#~".contains(c))
}

fn settings() -> Settings {
    Settings::load(&Options::default()).expect("default settings")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn an_accepted_image_is_never_an_option_nor_carries_shell_syntax(name in hostile()) {
        let s = settings();
        if let Ok(image) = Image::parse(&name, &s) {
            prop_assert!(!image.name.starts_with('-'), "{:?}", image.name);
            prop_assert!(!has_shell_meta(&image.name), "{:?}", image.name);
            prop_assert!(!image.name.contains(".."), "{:?}", image.name);
        }
    }

    #[test]
    fn valid_image_references_are_accepted_with_their_host(
        host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){1,2}(:[1-9][0-9]{1,4})?",
        repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
    ) {
        let name = format!("{host}/{repo}:{tag}");
        prop_assume!(!name.contains(".."));
        let image = Image::parse(&name, &settings()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(image.host.as_deref(), Some(host.as_str()));
    }

    #[test]
    fn an_accepted_volume_has_absolute_paths_without_dot_dot(spec in hostile()) {
        if let Ok(v) = Volume::from_str(&spec) {
            prop_assert!(v.host.is_absolute());
            prop_assert!(v.guest.starts_with('/'));
            prop_assert!(!v.host.components().any(|c| c.as_os_str() == ".."));
            prop_assert!(!v.guest.split('/').any(|c| c == ".."));
            prop_assert!(!v.guest.chars().any(|c| c.is_control() || c == '\'' || c == '"' || c == '\\'));
        }
    }

    #[test]
    fn volumes_round_trip(
        host in "(/[a-zA-Z0-9_.-]{1,8}){1,4}",
        guest in "(/[a-zA-Z0-9_-]{1,8}){1,4}",
        ro in any::<bool>(),
    ) {
        prop_assume!(!host.split('/').any(|c| c == ".." || c == "."));
        let spec = if ro { format!("{host}:{guest}:ro") } else { format!("{host}:{guest}") };
        let v = Volume::from_str(&spec).map_err(TestCaseError::fail)?;
        prop_assert_eq!(v.host.to_str(), Some(host.as_str()));
        prop_assert_eq!(v.guest, guest);
        prop_assert_eq!(v.read_only, ro);
    }

    #[test]
    fn an_accepted_display_is_width_x_height_and_nothing_else(s in hostile()) {
        if let Ok(Display(d)) = Display::from_str(&s) {
            let core = d.trim_end_matches("pt").trim_end_matches("px");
            let (w, h) = core.split_once('x').expect("x");
            prop_assert!(w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok(), "{:?}", d);
        }
    }

    #[test]
    fn resources_are_auto_or_a_positive_number(s in hostile(), n in 1u64..1_000_000) {
        match Resource::from_str(&s) {
            Ok(Resource::Auto) => prop_assert_eq!(s.trim(), "auto"),
            Ok(Resource::Fixed(v)) => prop_assert!(v >= 1),
            Err(_) => {}
        }
        prop_assert_eq!(Resource::from_str(&n.to_string()), Ok(Resource::Fixed(n)));
    }

    #[test]
    fn pull_policies_and_transports_accept_only_their_names(s in hostile()) {
        if let Ok(p) = PullPolicy::from_str(&s) {
            prop_assert!(["always", "if-not-present", "if_not_present", "never"].contains(&s.trim()), "{:?} -> {:?}", s, p);
        }
        if TransportKind::from_str(&s).is_ok() {
            prop_assert!(["ssh", "exec", "auto"].contains(&s.trim()));
        }
    }

    #[test]
    fn an_accepted_shell_or_user_carries_no_shell_syntax(s in hostile()) {
        if validate_shell(&s).is_ok() {
            prop_assert!(!has_shell_meta(&s), "{:?}", s);
        }
        if validate_user(&s).is_ok() {
            prop_assert!(!has_shell_meta(&s) && !s.starts_with('-'), "{:?}", s);
        }
    }

    #[test]
    fn an_accepted_guest_path_is_absolute_without_dot_dot(s in hostile()) {
        if validate_guest_path(&s).is_ok() {
            prop_assert!(s.starts_with('/'), "{:?}", s);
            prop_assert!(!s.split('/').any(|c| c == ".."), "{:?}", s);
        }
    }

    #[test]
    fn only_names_the_driver_makes_are_taken_for_its_own(name in hostile()) {
        if let Some(vm) = VmName::parse_ours(&name) {
            prop_assert!(vm.as_str().starts_with("tartdrv-"));
            prop_assert!(vm.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }

    #[test]
    fn tarts_json_never_panics_the_parsers(s in hostile()) {
        let _ = serde_json::from_str::<Vec<ListEntry>>(&s);
        let _ = serde_json::from_str::<VmInfo>(&s);
    }

    #[test]
    fn list_entries_parse_with_any_name_and_extra_keys(name in any::<String>(), extra in "[A-Za-z]{1,10}") {
        let json = serde_json::json!([{ "Name": name, "Source": "local", "State": "stopped", extra: [1, {"x": null}], "Disk": 50 }]);
        let list: Vec<ListEntry> = serde_json::from_str(&json.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&list[0].name, &name);
        prop_assert!(list[0].is_local() && !list[0].is_running());
    }
}

proptest! {
    // Each case starts a shell: fewer of them.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// What guest setup quotes reaches the shell as exactly that string.
    #[test]
    fn quoted_values_reach_sh_unchanged(value in "[^\\x00]{0,60}") {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(&value)))
            .output()
            .expect("sh");
        prop_assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }

    /// Any text as the YAML config file: a clean error or settings, never a panic or a hang.
    #[test]
    fn any_config_file_loads_or_fails_cleanly(text in prop_oneof![
        any::<String>(),
        "([a-z_]{1,20}: ([-a-z0-9/.:]{0,12}|\\[[a-z0-9, ]{0,12}\\]|&a x|\\*a)\n){1,6}",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driver.yaml");
        std::fs::write(&path, &text).unwrap();
        let options = Options { config: Some(path), ..Default::default() };
        let _ = Settings::load(&options);
    }
}

/// Aliases that expand exponentially ("billion laughs") are refused quickly.
#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.yaml");
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let result = Settings::load(&Options {
        config: Some(path),
        ..Default::default()
    });
    assert!(result.is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
