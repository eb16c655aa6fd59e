//! Proof that the guest the driver logged in to is this job's own VM.
//!
//! `tart ip` answers with the DHCP lease of the VM's MAC address, and on a Mac one NAT
//! network and one lease table serve every user and every TART_HOME. `tart clone` gives a
//! clone a new MAC only when a VM of its own TART_HOME already has the image's, so another
//! user's clone of the same image has the same MAC, and its lease answers for this job's
//! VM, also when this job's `tart run` failed. Clones of one image share their SSH host
//! keys and their password, so a successful login proves nothing.
//!
//! What only this VM can have: a random nonce in a read-only directory that only this
//! job's `tart run` shares into its guest. Right after login, before the job's scripts, its
//! variables or its files are sent, the driver reads the nonce back through the login and
//! compares. The nonce is never sent to the guest; it is read from it.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::transport::ssh::{self, SshTransport};
use crate::guest::transport::RemoteExit;
use crate::host::vm::VmState;

/// Name (macOS) and mount tag (Linux) of the identity share.
pub const SHARE_NAME: &str = "tartdrv-identity";

/// What the guest prints before the nonce it sees, so that login noise cannot be mistaken
/// for it.
const MARKER: &str = "tartdrv-identity:";

/// What the guest prints when it cannot mount or read the identity share.
const NO_SHARE: &str = "tartdrv-identity-unreadable";

/// This VM's nonce and the host directory that shares it.
pub struct Identity {
    nonce: String,
    dir: PathBuf,
}

impl Identity {
    /// A fresh nonce for this start of the VM, in `<VM state>/identity/nonce`. The state
    /// directory is private to the runner's user, so no other local user can read it.
    pub fn create(state: &VmState) -> Result<Identity> {
        let dir = state.dir.join("identity");
        let _ = std::fs::remove_dir_all(&dir);
        // Readable inside the share whatever uid the guest user has.
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let nonce = random_hex(16)?;
        let path = dir.join("nonce");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut file, nonce.as_bytes())?;
        Ok(Identity { nonce, dir })
    }

    /// The nonce the VM in `state` was started with: a warm VM's, made when it booted.
    pub fn existing(state: &VmState) -> Result<Identity> {
        let dir = state.dir.join("identity");
        let nonce = std::fs::read_to_string(dir.join("nonce"))
            .with_context(|| format!("cannot read {}", dir.join("nonce").display()))?;
        Ok(Identity {
            nonce: nonce.trim().to_string(),
            dir,
        })
    }

    /// The `tart run --dir` value that shares the nonce, read-only and under a mount tag
    /// of its own, into this VM only.
    pub fn dir_arg(&self) -> String {
        format!("{}:ro,tag={SHARE_NAME}", self.dir.display())
    }

    /// Whether the output of [`probe_command`] shows this VM's nonce.
    pub fn matches(&self, probe_output: &str) -> bool {
        probe_output
            .lines()
            .filter_map(|l| l.trim().strip_prefix(MARKER))
            .any(|seen| seen == self.nonce)
    }
}

/// Checks, over the job's fresh SSH connection to `ip`, that the guest there is this job's
/// VM and that its `tart run` still lives; on a mismatch the connection is closed at once.
pub async fn prove(identity: &Identity, state: &VmState, os: &str, ip: &str) -> Result<()> {
    let ssh = SshTransport::attach(state)?;
    let seen = ssh
        .run_captured(&probe_command(os), b"", Duration::from_secs(30))
        .await;
    let ours = matches!(&seen, Ok((RemoteExit::Code(_), out)) if identity.matches(out));
    if !ours {
        ssh::close_master(state).await?;
    }
    // A VM whose `tart run` has ended is not used, whatever answered.
    if let Some(ending) = state.run_ending() {
        bail!("the VM stopped while booting: {ending}");
    }
    match seen {
        _ if ours => Ok(()),
        Ok((RemoteExit::Lost(why), _)) => bail!("checking the VM's identity: {why}"),
        Err(e) => Err(e.context("checking the VM's identity")),
        Ok((_, out)) if out.contains(NO_SHARE) => bail!(
            "the VM answering at {ip} shows no identity share of this job, so nothing of the job was sent to it: either it is not this job's VM ({}), or the guest cannot mount a virtiofs share (macOS 13+ guests can; Linux guests need root or passwordless sudo for `mount -t virtiofs`)",
            COLLISION
        ),
        Ok(_) => bail!(mismatch_message(ip)),
    }
}

/// A command for the guest user's shell (zsh, bash or sh) that mounts the identity share's
/// tag on a fresh temporary directory and prints the nonce it holds, or the "no share"
/// marker when the mount or the read fails. The share has a tag of its own, so a macOS
/// guest does not depend on the automount of `/Volumes/My Shared Files` (which can lag or
/// miss); `mount_virtiofs` needs no root there. A Linux guest needs root, or sudo without a
/// password. BSD and GNU tools alike; the mount is taken down again.
pub fn probe_command(os: &str) -> String {
    let mount = if os == "linux" {
        format!("$m mount -t virtiofs {SHARE_NAME} \"$d\"")
    } else {
        format!("mount_virtiofs {SHARE_NAME} \"$d\"")
    };
    // A macOS user may unmount their own mount; elsewhere it takes root.
    let unmount = "{ umount \"$d\" || $m umount \"$d\"; } 2>/dev/null";
    format!(
        "m=; [ \"$(id -u)\" = 0 ] || m='sudo -n'; d=$(mktemp -d) || exit 0; \
         if {mount} 2>/dev/null && v=$(cat \"$d/nonce\" 2>/dev/null); then printf '{MARKER}%s\\n' \"$v\"; \
         else echo '{NO_SHARE}'; fi; {unmount}; rmdir \"$d\" 2>/dev/null; true"
    )
}

/// The likely cause of a foreign VM at this job's address, and the fix.
const COLLISION: &str = "another VM on this Mac, another user's or another TART_HOME's clone of the same image, has this image's MAC address, and its DHCP lease answered `tart ip`; give each clone its own MAC with --random-mac, or isolate VMs with Softnet (--softnet)";

/// Why a job refuses a guest that is not its VM, and what the admin can do about it.
pub fn mismatch_message(ip: &str) -> String {
    format!(
        "the VM answering at {ip} is not this job's VM: it holds another identity nonce. Nothing of the job was sent to it. Likely: {COLLISION}"
    )
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(nonce: &str) -> Identity {
        Identity {
            nonce: nonce.into(),
            dir: "/state/vms/x/identity".into(),
        }
    }

    #[test]
    fn only_the_exact_nonce_after_the_marker_matches() {
        let id = identity("0123abcd");
        assert!(id.matches("motd noise\ntartdrv-identity:0123abcd\n"));
        assert!(!id.matches("tartdrv-identity:\n"));
        assert!(!id.matches("tartdrv-identity:0123abcdX\n"));
        assert!(!id.matches("0123abcd\n"));
    }

    fn on_path(name: &str) -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    #[test]
    fn the_share_is_read_only_under_a_tag_of_its_own() {
        assert_eq!(
            identity("n").dir_arg(),
            "/state/vms/x/identity:ro,tag=tartdrv-identity"
        );
    }

    #[test]
    fn probe_commands_parse_in_the_shells_guests_log_in_with() {
        for shell in ["sh", "bash", "zsh"] {
            let Some(shell) = on_path(shell) else {
                continue;
            };
            for os in ["darwin", "linux"] {
                let status = std::process::Command::new(&shell)
                    .args(["-n", "-c", &probe_command(os)])
                    .status()
                    .unwrap();
                assert!(
                    status.success(),
                    "{} {}",
                    shell.display(),
                    probe_command(os)
                );
            }
        }
    }

    #[test]
    fn a_guest_without_the_share_says_so() {
        // No virtiofs here: the mount fails, and the probe says the share is unreadable.
        let out = std::process::Command::new("sh")
            .args(["-c", &probe_command("darwin")])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains(NO_SHARE), "{out}");
        assert!(!identity("n").matches(&out));
    }
}
