//! Property tests of the admin's values and config file, as hostile as a job's input: whatever
//! the text, parsing never panics or hangs, and what is accepted is safe to put on a Tart or
//! shell command line. The end-to-end side of hostile input is `tests/hostile.rs`.

use std::str::FromStr;

use proptest::prelude::*;

use super::{
    validate_guest_path, validate_shell, validate_user, Display, Options, Settings, Volume,
};
use crate::testing::{has_shell_meta, hostile};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

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
}

proptest! {
    // Each case writes and reads a file: fewer of them.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

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
