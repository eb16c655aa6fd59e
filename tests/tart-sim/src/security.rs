//! `security`, as macOS's keychain tool answers `find-internet-password` about the simulated
//! login keychain (the one `tart login` writes): found through the user database like the
//! real one, so `HOME` does not hide it. The simulator binary acts as `security` when it is
//! started under that name (the test bed links it into the simulated Mac's PATH).

use crate::oci::{keychain, keychain_path};
use crate::Fail;

/// `security find-internet-password [-s server] [-l label] [-a account] [-r protocol] [-g|-w]`.
/// Tart stores its items with the label `Tart Credentials`, the HTTPS protocol and the
/// registry host as the server.
pub fn main(args: &[String]) -> Result<(), Fail> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage());
    };
    if sub != "find-internet-password" {
        return Err(Fail::Bare(
            format!("security (tart-sim stand-in): `{sub}` is not simulated"),
            1,
        ));
    }
    let mut server = None;
    let mut label = None;
    let mut account = None;
    let mut secret = false;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-s" => server = it.next().cloned(),
            "-l" => label = it.next().cloned(),
            "-a" => account = it.next().cloned(),
            "-r" => {
                if it.next().map(String::as_str) != Some("htps") {
                    return Err(not_found());
                }
            }
            "-g" | "-w" => secret = true,
            _ => return Err(usage()),
        }
    }
    let home = std::path::PathBuf::new();
    let items = keychain(&home);
    let found = items.iter().find(|(host, item)| {
        server.as_deref().is_none_or(|s| s == host.as_str())
            && label.as_deref().is_none_or(|l| l == "Tart Credentials")
            && account
                .as_deref()
                .is_none_or(|a| item.get("username").and_then(|u| u.as_str()) == Some(a))
    });
    let Some((host, item)) = found else {
        return Err(not_found());
    };
    if secret {
        // The simulated keychain keeps no secret to show.
        return Err(Fail::Bare(
            "security (tart-sim stand-in): the simulated keychain holds no secrets".into(),
            1,
        ));
    }
    let account = item.get("username").and_then(|u| u.as_str()).unwrap_or("");
    println!("keychain: \"{}\"", keychain_path(&home).display());
    println!("version: 512");
    println!("class: \"inet\"");
    println!("attributes:");
    println!("    0x00000007 <blob>=\"Tart Credentials\"");
    println!("    \"acct\"<blob>=\"{account}\"");
    println!("    \"ptcl\"<uint32>=\"htps\"");
    println!("    \"srvr\"<blob>=\"{host}\"");
    Ok(())
}

fn not_found() -> Fail {
    Fail::Bare(
        "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain."
            .into(),
        44,
    )
}

fn usage() -> Fail {
    Fail::Bare(
        "Usage: find-internet-password [-a account] [-s server] [-l label] [-r protocol] [-g] [-w]"
            .into(),
        2,
    )
}
