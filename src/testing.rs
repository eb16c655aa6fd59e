//! Helpers for the unit tests, compiled only for them: the hostile input that the property
//! tests next to each parser feed it. No test lives here.

use proptest::prelude::*;

/// Strings that lean towards the characters attacks are made of.
pub fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-a-z0-9./:=;|&$`'\" \\n\\t\\\\()*?<>@#%+,~!]{0,40}",
        "(--?[a-z-]{1,12}(=[^ ]{0,10})? ?){1,3}",
    ]
}

/// Whether `s` holds anything a shell would read as syntax.
pub fn has_shell_meta(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "$`'\";|&<>(){}\\*?!#~".contains(c))
}
