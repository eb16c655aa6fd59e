//! Property tests of the quoting guest setup relies on.

use proptest::prelude::*;

use super::quote;

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
}
