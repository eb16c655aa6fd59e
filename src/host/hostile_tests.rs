//! Property tests of what the host reads from Tart and from VM names: whatever the input,
//! the parsers never panic, and only names the driver makes are taken for its own.

use proptest::prelude::*;

use super::tart::{ListEntry, VmInfo};
use super::vm::VmName;
use crate::testing::hostile;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

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
