//! The guest side: how commands reach a VM (`transport`: one SSH ControlMaster per job,
//! or `tart exec`), the login environment (`login`), the proof that a VM is this job's
//! (`identity`) and, in this file, the guest setup script. May use: the host side (VM
//! records, state directory, Tart's client) and the shared kinds; nothing above it, not
//! even settings, whose values reach it as plain arguments.
//!
//! Guest setup: what prepare does inside a freshly booted VM, as one shell script sent in
//! one round trip. It links (macOS) or mounts (Linux) the host directories Tart shares into
//! the guest, creates the builds and cache directories, and installs gitlab-runner when the
//! admin or the job asks for it.

#[cfg(test)]
mod hostile_tests;
pub mod identity;
pub mod login;
pub mod transport;

use std::path::PathBuf;

/// Where Tart's macOS guests mount the default share tag.
pub const MACOS_SHARES: &str = "/Volumes/My Shared Files";

/// Default guest paths of the builds and cache directories. Absolute, because jobs `cd
/// "$CI_PROJECT_DIR"` from anywhere; under `/tmp`, because that exists and is writable for
/// any user on macOS and Linux guests alike, and the VM is thrown away after the job.
pub const GUEST_BUILDS_DIR: &str = "/tmp/builds";
pub const GUEST_CACHE_DIR: &str = "/tmp/cache";

/// Where the driver puts tools it installs (gitlab-runner), relative to the guest user's
/// home: no sudo needed, and every stage puts it first on PATH.
pub const GUEST_TOOLS_DIR: &str = ".gitlab-runner-tart-driver/bin";

/// A host directory shared into the VM and where the guest should see it.
#[derive(Debug, Clone)]
pub struct Share {
    /// Share name (macOS) and mount tag (Linux); unique within the VM.
    pub name: String,
    pub host: PathBuf,
    /// Absolute guest path.
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
    /// Copy the host's own binary when the guest runs the host's OS.
    pub copy_from_host: bool,
}

/// The setup script, for `sh -s` in the guest.
pub fn setup_script(os: &str, shares: &[Share], dirs: &[&str], install: &RunnerInstall) -> String {
    // Without sudo where the user may write, with it elsewhere (volumes under /opt, ...).
    let mut s = format!(
        "set -e\ncd \"$HOME\"\nPATH=\"$HOME/{GUEST_TOOLS_DIR}:$PATH\"\nmay_sudo() {{ \"$@\" 2>/dev/null || sudo -n \"$@\"; }}\n"
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
    // One `mkdir` when the user may create them (the usual case: /tmp), sudo otherwise.
    let own: Vec<String> = dirs
        .iter()
        .filter(|dir| !shares.iter().any(|share| share.guest == **dir))
        .map(|dir| quote(dir))
        .collect();
    if !own.is_empty() {
        let list = own.join(" ");
        let writable: Vec<String> = own.iter().map(|d| format!("[ -w {d} ]")).collect();
        s.push_str(&format!(
            "{{ mkdir -p {list} 2>/dev/null && {}; }} || {{ sudo -n mkdir -p {list} && sudo -n chown \"$(id -u):$(id -g)\" {list}; }}\n",
            writable.join(" && ")
        ));
    }
    if install.wanted || install.force {
        s.push_str(&install_runner_script(install));
    } else {
        s.push_str(
            "command -v gitlab-runner >/dev/null 2>&1 || echo 'WARNING: no gitlab-runner in the VM: artifacts and cache will be skipped (bake it into the image, or --install-gitlab-runner)'\n",
        );
    }
    s
}

/// Installs gitlab-runner into the tools directory: a download over HTTPS checked against
/// the release's published SHA-256 list (curl, else wget), else Homebrew.
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
  dest="$HOME/{GUEST_TOOLS_DIR}"; mkdir -p "$dest"; tmp=$(mktemp -d)
  if command -v curl >/dev/null 2>&1; then fetch() {{ curl -fsSL --retry 2 -o "$2" "$1"; }}
  elif command -v wget >/dev/null 2>&1; then fetch() {{ wget -q -O "$2" "$1"; }}
  else fetch() {{ return 1; }}; fi
  if fetch "$base/binaries/gitlab-runner-$os-$arch" "$tmp/gitlab-runner" && fetch "$base/release.sha256" "$tmp/release.sha256"; then
    want=$(grep " \*\{{0,1\}}binaries/gitlab-runner-$os-$arch\$" "$tmp/release.sha256" | cut -d' ' -f1)
    have=$( (shasum -a 256 "$tmp/gitlab-runner" 2>/dev/null || sha256sum "$tmp/gitlab-runner") | cut -d' ' -f1)
    [ -n "$want" ] && [ "$want" = "$have" ] || {{ echo "the gitlab-runner download does not match its published checksum" >&2; exit 1; }}
    install -m 0755 "$tmp/gitlab-runner" "$dest/gitlab-runner"
  elif command -v brew >/dev/null 2>&1; then
    [ "{version}" = latest ] || echo "Homebrew installs the current gitlab-runner, not {version}" >&2
    brew install gitlab-runner >/dev/null
  else
    echo "cannot install gitlab-runner {version}: no download with curl or wget, and no brew; bake it into the image or let the VM reach gitlab-runner-downloads.s3.amazonaws.com" >&2
    exit 1
  fi
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

/// The host's gitlab-runner binary, to copy into a guest that runs the host's OS.
pub fn host_gitlab_runner() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("gitlab-runner"))
        .find(|p| p.is_file())
}

/// Whether a guest of `os` (Tart's `darwin`/`linux`) can run this host's binaries: Tart
/// guests always have the host's architecture, so only the OS can differ.
pub fn guest_runs_host_binaries(os: &str) -> bool {
    (os == "darwin" && cfg!(target_os = "macos")) || (os == "linux" && cfg!(target_os = "linux"))
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
            guest: "/tmp/builds".into(),
            read_only: true,
        };
        assert_eq!(share.dir_arg("linux"), "/h/b:ro,tag=tartdrv-builds");
        assert_eq!(share.dir_arg("darwin"), "tartdrv-builds:/h/b:ro");
    }

    #[test]
    fn setup_script_parses_as_sh() {
        let share = Share {
            name: "v".into(),
            host: "/h".into(),
            guest: "/opt/x y".into(),
            read_only: false,
        };
        let install = RunnerInstall {
            wanted: true,
            force: false,
            version: "17.6.0".into(),
            copy_from_host: false,
        };
        for os in ["darwin", "linux"] {
            let script = setup_script(os, std::slice::from_ref(&share), &["/tmp/builds"], &install);
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(status.success(), "{script}");
        }
    }
}
