//! Guest setup: what prepare does inside a freshly booted VM, as one shell script sent in
//! one round trip. It links (macOS) or mounts (Linux) the host directories Tart shares into
//! the guest, creates the builds and cache directories, and installs gitlab-runner when the
//! admin or the job asks for it.

use std::path::PathBuf;

/// Where Tart's macOS guests mount the default share tag.
pub const MACOS_SHARES: &str = "/Volumes/My Shared Files";

/// Guest paths of the builds and cache directories. Absolute, because jobs `cd
/// "$CI_PROJECT_DIR"` from anywhere; under `/tmp`, because that exists and is writable for
/// any user on macOS and Linux guests alike, and the VM is thrown away after the job.
pub const GUEST_BUILDS_DIR: &str = "/tmp/builds";
pub const GUEST_CACHE_DIR: &str = "/tmp/cache";

/// A host directory shared into the VM and where the guest should see it.
#[derive(Debug, Clone)]
pub struct Share {
    /// Share name (macOS) and mount tag (Linux); unique within the VM.
    pub name: String,
    pub host: PathBuf,
    /// Guest path: relative to the home directory, or absolute.
    pub guest: String,
    pub read_only: bool,
}

impl Share {
    /// The `tart run --dir` value for this share.
    pub fn dir_arg(&self, os: &str) -> String {
        let ro = if self.read_only { "ro," } else { "" };
        if os == "linux" {
            // Linux guests mount by tag, so each share gets its own tag.
            format!("{}:{}tag={}", self.host.display(), ro, self.name)
        } else if self.read_only {
            format!("{}:{}:ro", self.name, self.host.display())
        } else {
            format!("{}:{}", self.name, self.host.display())
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunnerInstall {
    pub wanted: bool,
    pub force: bool,
    pub version: String,
}

/// The setup script, for `sh -s` in the guest.
pub fn setup_script(os: &str, shares: &[Share], install: &RunnerInstall) -> String {
    // Without sudo where the user may write, with it elsewhere (volumes under /opt, ...).
    let mut s = String::from(
        "set -e\ncd \"$HOME\"\nmay_sudo() { \"$@\" 2>/dev/null || sudo -n \"$@\"; }\n",
    );
    if os != "linux" && !shares.is_empty() {
        // The automount can lag the first login by a moment.
        s.push_str(&format!(
            "i=0; while [ ! -d '{MACOS_SHARES}' ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             [ -d '{MACOS_SHARES}' ] || {{ echo 'shared folders did not appear at {MACOS_SHARES}' >&2; exit 1; }}\n"
        ));
    }
    for share in shares {
        let target = quote(&share.guest);
        s.push_str(&format!("may_sudo mkdir -p \"$(dirname {target})\"\n"));
        if os == "linux" {
            s.push_str(&format!(
                "may_sudo mkdir -p {target}\nsudo -n mount -t virtiofs {} {target}\n",
                quote(&share.name)
            ));
        } else {
            let source = quote(&format!("{MACOS_SHARES}/{}", share.name));
            s.push_str(&format!(
                "if [ -d {target} ] && [ ! -L {target} ]; then may_sudo rm -rf {target}; fi\nmay_sudo ln -sfn {source} {target}\n"
            ));
        }
    }
    for dir in [GUEST_BUILDS_DIR, GUEST_CACHE_DIR] {
        if !shares.iter().any(|share| share.guest == dir) {
            s.push_str(&format!("mkdir -p {}\n", quote(dir)));
        }
    }
    if install.wanted || install.force {
        s.push_str(&install_runner_script(install));
    }
    s
}

/// Downloads gitlab-runner over HTTPS and checks it against the release's SHA-256 list.
fn install_runner_script(install: &RunnerInstall) -> String {
    let version = if install.version == "latest" || install.version.starts_with('v') {
        install.version.clone()
    } else {
        format!("v{}", install.version)
    };
    let force = if install.force { "1" } else { "0" };
    format!(
        r#"if [ {force} = 1 ] || ! command -v gitlab-runner >/dev/null 2>&1; then
  os=$(uname -s | tr 'A-Z' 'a-z'); arch=$(uname -m)
  case "$arch" in arm64|aarch64) arch=arm64 ;; x86_64|amd64) arch=amd64 ;; esac
  base="https://gitlab-runner-downloads.s3.amazonaws.com/{version}"
  tmp=$(mktemp -d)
  command -v curl >/dev/null 2>&1 || {{ echo "installing gitlab-runner needs curl in the VM" >&2; exit 1; }}
  curl -fsSL --retry 2 -o "$tmp/gitlab-runner" "$base/binaries/gitlab-runner-$os-$arch" || {{ echo "cannot download gitlab-runner {version} for $os-$arch: does the VM reach the internet?" >&2; exit 1; }}
  curl -fsSL --retry 2 -o "$tmp/release.sha256" "$base/release.sha256"
  want=$(grep " \*\{{0,1\}}binaries/gitlab-runner-$os-$arch\$" "$tmp/release.sha256" | cut -d' ' -f1)
  have=$( (shasum -a 256 "$tmp/gitlab-runner" 2>/dev/null || sha256sum "$tmp/gitlab-runner") | cut -d' ' -f1)
  [ -n "$want" ] && [ "$want" = "$have" ] || {{ echo "gitlab-runner download does not match its published checksum" >&2; exit 1; }}
  sudo -n install -m 0755 "$tmp/gitlab-runner" /usr/local/bin/gitlab-runner
  rm -rf "$tmp"
fi
echo "gitlab-runner in the VM: $(gitlab-runner --version 2>/dev/null | head -n 1)"
"#
    )
}

/// Single-quotes a value for sh.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn linux_shares_use_their_own_tag_and_macos_shares_a_name() {
        let share = Share {
            name: "tartdrv-builds".into(),
            host: "/h/b".into(),
            guest: GUEST_BUILDS_DIR.into(),
            read_only: true,
        };
        assert_eq!(share.dir_arg("linux"), "/h/b:ro,tag=tartdrv-builds");
        assert_eq!(share.dir_arg("darwin"), "tartdrv-builds:/h/b:ro");
    }
}
