//! Property tests of the image a job names: whatever the text, an accepted image is never an
//! option and carries no shell syntax, and valid references keep their registry host.

use proptest::prelude::*;

use super::image::Image;
use crate::settings::{Options, Settings};
use crate::testing::{has_shell_meta, hostile};

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
        host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){1,2}(:[1-9][0-9]{1,3})?",
        repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
    ) {
        let name = format!("{host}/{repo}:{tag}");
        prop_assume!(!name.contains(".."));
        // HTTPS's own port is refused as a second spelling of the host (image::tests).
        prop_assume!(!host.ends_with(":443"));
        let image = Image::parse(&name, &settings()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(image.host.as_deref(), Some(host.as_str()));
    }
}
