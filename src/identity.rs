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

use crate::guest::{quote, Share, MACOS_SHARES};
use crate::transport::ssh::{self, SshTransport};
use crate::transport::RemoteExit;
use crate::vm::VmState;

/// Name (macOS) and mount tag (Linux) of the identity share.
pub const SHARE_NAME: &str = "tartdrv-identity";

/// How long a macOS guest may take to show the share after login (its automount lags).
const MACOS_SHARE_WAIT_TENTHS: u32 = 50;

/// What the guest prints before the nonce it sees, so that login noise cannot be mistaken
/// for it.
const MARKER: &str = "tartdrv-identity:";

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

    /// The `tart run --dir` value that shares the nonce, read-only, into this VM only.
    pub fn dir_arg(&self, os: &str) -> String {
        Share {
            name: SHARE_NAME.into(),
            host: self.dir.clone(),
            guest: String::new(),
            read_only: true,
        }
        .dir_arg(os)
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
        ssh::close_master(&state.control_socket()).await?;
    }
    // A VM whose `tart run` has ended is not used, whatever answered.
    if let Some(ending) = state.run_ending() {
        bail!("the VM stopped while booting: {ending}");
    }
    match seen {
        _ if ours => Ok(()),
        Ok((RemoteExit::Lost(why), _)) => bail!("checking the VM's identity: {why}"),
        Err(e) => Err(e.context("checking the VM's identity")),
        Ok(_) => bail!(mismatch_message(ip)),
    }
}

/// A command for the guest user's shell (zsh, bash or sh) that prints the nonce the guest
/// sees in its identity share, or nothing after the marker when it has no such share.
pub fn probe_command(os: &str) -> String {
    if os == "linux" {
        // Nothing is mounted automatically in Linux guests; the mount is taken down again.
        format!(
            "d=$(mktemp -d) && sudo -n mount -t virtiofs -o ro {SHARE_NAME} \"$d\" 2>/dev/null; \
             v=$(cat \"$d/nonce\" 2>/dev/null); sudo -n umount \"$d\" 2>/dev/null; rmdir \"$d\" 2>/dev/null; \
             printf '{MARKER}%s\\n' \"$v\""
        )
    } else {
        let file = quote(&format!("{MACOS_SHARES}/{SHARE_NAME}/nonce"));
        format!(
            "i=0; while [ ! -r {file} ] && [ $i -lt {MACOS_SHARE_WAIT_TENTHS} ]; do sleep 0.1; i=$((i+1)); done; \
             printf '{MARKER}%s\\n' \"$(cat {file} 2>/dev/null)\""
        )
    }
}

/// Why a job refuses a guest that is not its VM, and what the admin can do about it.
pub fn mismatch_message(ip: &str) -> String {
    format!(
        "the VM answering at {ip} is not this job's VM: it does not see this job's identity share. \
         Another VM on this Mac (another user's or another TART_HOME's clone of the same image) has \
         this image's MAC address, and its DHCP lease answered `tart ip`. Nothing of the job was sent \
         to it. Fix: give each clone its own MAC (--random-mac, or job_overrides random_mac), or \
         isolate VMs with Softnet (--softnet)"
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

    #[test]
    fn the_share_is_read_only_and_named_for_both_guest_systems() {
        let id = identity("n");
        assert_eq!(
            id.dir_arg("darwin"),
            "tartdrv-identity:/state/vms/x/identity:ro"
        );
        assert_eq!(
            id.dir_arg("linux"),
            "/state/vms/x/identity:ro,tag=tartdrv-identity"
        );
    }

    #[test]
    fn probe_commands_parse_as_sh() {
        for os in ["darwin", "linux"] {
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", &probe_command(os)])
                .status()
                .unwrap();
            assert!(status.success(), "{}", probe_command(os));
        }
    }
}
