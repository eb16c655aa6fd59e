//! ssh's `ProxyCommand` for an Orchard VM: the hidden `orchard-proxy VM PORT` subcommand
//! (`stages::orchard_proxy`) with what it needs to find and trust the controller.

use std::path::Path;
use std::time::Duration;

use super::settings::OrchardSettings;
use super::trust::Trust;

/// The `ProxyCommand` for ssh to reach `vm`'s sshd: this driver's hidden subcommand with what
/// it needs to find and trust the controller, all of it paths and names, no secret (ssh's
/// argv is visible to every user of the host). `--config /dev/null`: nothing else matters to
/// it, so no other file can break it. Each word is quoted for the shell ssh runs it with,
/// and `%` doubled, since ssh expands `%` tokens in it.
pub fn command(exe: &Path, orchard: &OrchardSettings, vm: &str, retry_for: Duration) -> String {
    let mut words = vec![
        exe.display().to_string(),
        "orchard-proxy".into(),
        "--config".into(),
        "/dev/null".into(),
        "--orchard-url".into(),
        orchard.url.to_string(),
        "--orchard-service-account".into(),
        orchard.service_account.clone(),
        "--orchard-token-file".into(),
        orchard.token_file.display().to_string(),
    ];
    if orchard.allow_plain_http {
        words.push("--orchard-allow-plain-http".into());
    }
    match &orchard.trust {
        Trust::SystemRoots => {}
        Trust::CaFile(path) => {
            words.extend(["--orchard-ca-file".into(), path.display().to_string()]);
        }
        Trust::Fingerprint(bytes) => words.extend([
            "--orchard-ca-fingerprint".into(),
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ]),
    }
    words.extend([
        "--retry-for".into(),
        retry_for.as_secs().max(1).to_string(),
        vm.to_string(),
        "22".into(),
    ]);
    words
        .iter()
        .map(|w| crate::guest::quote(w).replace('%', "%%"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_command_names_only_paths_and_quotes_every_word_for_ssh() {
        let orchard = OrchardSettings::example(
            "https://orchard.example.com:6120/o",
            "/etc/orchard/it's 100% secret-file".into(),
            Trust::Fingerprint([0xab; 32]),
        );
        let cmd = command(
            Path::new("/opt/driver"),
            &orchard,
            "gl-1-2-3",
            Duration::from_secs(20),
        );
        assert!(
            cmd.starts_with("'/opt/driver' 'orchard-proxy' '--config' '/dev/null'"),
            "{cmd}"
        );
        assert!(
            cmd.contains(r"'/etc/orchard/it'\''s 100%% secret-file'"),
            "{cmd}"
        );
        assert!(cmd.contains(&format!("'--orchard-ca-fingerprint' '{}'", "ab".repeat(32))));
        assert!(cmd.ends_with("'--retry-for' '20' 'gl-1-2-3' '22'"), "{cmd}");
    }

    #[test]
    fn the_admins_acceptance_of_plain_http_reaches_the_proxy() {
        let mut orchard = OrchardSettings::example(
            "http://orchard.internal:6120",
            "/etc/orchard/token".into(),
            Trust::SystemRoots,
        );
        let plain = |o: &OrchardSettings| {
            command(Path::new("/d"), o, "vm", Duration::from_secs(5))
                .contains("'--orchard-allow-plain-http'")
        };
        assert!(!plain(&orchard));
        orchard.allow_plain_http = true;
        assert!(plain(&orchard));
    }
}
