//! What the user of a macOS guest has that a Linux host does not: zsh as login shell,
//! `/etc/zprofile` running `path_helper`, the macOS sshd's default PATH (no Homebrew on
//! it), and, for images with Homebrew, `/opt/homebrew/bin` (`brew`, `gitlab-runner`)
//! reachable only through the `brew shellenv` line Homebrew's installer leaves in
//! `~/.zprofile`. A non-login shell of such a guest finds no `gitlab-runner`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The login shell of macOS users.
pub const LOGIN_SHELL: &str = "/bin/zsh";

/// The PATH macOS's sshd gives a session, before any profile.
pub const SSHD_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// macOS's `/etc/zprofile`.
const ZPROFILE: &str = "# System-wide profile for interactive zsh(1) login shells.

# Setup user specific overrides for this in ~/.zprofile. See zshbuiltins(1)
# and zshoptions(1) for more details.

if [ -x /usr/libexec/path_helper ]; then
\teval `/usr/libexec/path_helper -s`
fi
";

/// `path_helper -s`: the PATH of `/etc/paths` (here built in) followed by the entries of
/// the current PATH not in it, as a `sh` assignment.
const PATH_HELPER: &str = r#"#!/bin/sh
# tart-sim: macOS's path_helper, with the stock /etc/paths built in.
p=/usr/local/bin:/System/Cryptexes/App/usr/bin:/usr/bin:/bin:/usr/sbin:/sbin
old_ifs=$IFS; IFS=:
for d in $PATH; do
  case ":$p:" in *":$d:"*) ;; *) [ -n "$d" ] && p="$p:$d" ;; esac
done
IFS=$old_ifs
case "$1" in
  -c) printf 'setenv PATH "%s";\n' "$p" ;;
  *) printf 'PATH="%s"; export PATH;\n' "$p" ;;
esac
"#;

const BREW: &str = r#"#!/bin/sh
# tart-sim: Homebrew's `brew`, only `shellenv` and `--prefix`.
case "$1" in
  shellenv)
    echo 'export HOMEBREW_PREFIX="/opt/homebrew";'
    echo 'export HOMEBREW_CELLAR="/opt/homebrew/Cellar";'
    echo 'export HOMEBREW_REPOSITORY="/opt/homebrew";'
    echo 'export PATH="/opt/homebrew/bin:/opt/homebrew/sbin${PATH+:$PATH}";' ;;
  --prefix) echo /opt/homebrew ;;
  *) echo "brew (tart-sim): only shellenv and --prefix are simulated" >&2; exit 1 ;;
esac
"#;

const GITLAB_RUNNER: &str = r#"#!/bin/sh
# tart-sim: a gitlab-runner that Homebrew installed; every helper command succeeds.
case "$1" in
  --version|-v) printf 'Version:      17.6.0\nGit revision: 0badc0de\nOS/Arch:      darwin/arm64\n' ;;
  *) exit 0 ;;
esac
"#;

/// Homebrew's installer asks users to add this to `~/.zprofile`; Cirrus images do.
const USER_ZPROFILE: &str = "eval \"$(/opt/homebrew/bin/brew shellenv)\"\n";

/// Whether this host can boot a macOS guest's userland.
pub fn check_host() -> Result<(), String> {
    if Path::new(LOGIN_SHELL).exists() {
        Ok(())
    } else {
        Err(format!(
            "{LOGIN_SHELL} is missing: macOS guests log in with zsh; install zsh (tests/bed/prepare-host.sh)"
        ))
    }
}

/// A fresh macOS home: no Linux skeleton files; with Homebrew, its line in `~/.zprofile`
/// (and no `~/.profile`, so `bash -l` does not see it).
pub fn populate_home(home: &Path, uid: u32, gid: u32, homebrew: bool) -> std::io::Result<()> {
    if homebrew {
        let zprofile = home.join(".zprofile");
        fs::write(&zprofile, USER_ZPROFILE)?;
        std::os::unix::fs::chown(&zprofile, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// How the guest's init shows the macOS userland, in the guest's mount namespace.
pub struct Mounts<'a> {
    /// The guest's private tmpfs (`run/`).
    pub run: &'a Path,
    pub user: &'a str,
    pub homebrew: bool,
}

impl Mounts<'_> {
    /// `bind(src, dst)` and `overlay(lower, upper, work)` are the init's mount helpers.
    pub fn apply(
        &self,
        bind: impl Fn(&str, &str) -> Result<(), String>,
        overlay: impl Fn(&str, &str, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let path = |p: &Path| p.to_string_lossy().into_owned();
        // The user's login shell is zsh.
        let passwd = fs::read_to_string("/etc/passwd").map_err(io)?;
        let passwd: String = passwd
            .lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split(':').collect();
                if fields.len() == 7 && fields[0] == self.user {
                    fields[6] = LOGIN_SHELL;
                }
                fields.join(":") + "\n"
            })
            .collect();
        let passwd_file = self.run.join("passwd");
        fs::write(&passwd_file, passwd).map_err(io)?;
        fs::set_permissions(&passwd_file, fs::Permissions::from_mode(0o644)).map_err(io)?;
        bind(&path(&passwd_file), "/etc/passwd")?;
        // macOS's zsh reads /etc/zprofile; Debian's, the one here, /etc/zsh/zprofile.
        let zprofile = self.run.join("zprofile");
        fs::write(&zprofile, ZPROFILE).map_err(io)?;
        bind(&path(&zprofile), "/etc/zsh/zprofile")?;
        // path_helper in /usr/libexec, and Homebrew under /opt, as overlays.
        let mut layers = vec![("/usr/libexec", vec![("path_helper", PATH_HELPER)])];
        if self.homebrew {
            layers.push((
                "/opt",
                vec![
                    ("homebrew/bin/brew", BREW),
                    ("homebrew/bin/gitlab-runner", GITLAB_RUNNER),
                ],
            ));
        }
        for (i, (target, files)) in layers.into_iter().enumerate() {
            let upper = self.run.join(format!("macos-upper-{i}"));
            let work = self.run.join(format!("macos-work-{i}"));
            fs::create_dir_all(&work).map_err(io)?;
            for (name, body) in files {
                let file = upper.join(name);
                fs::create_dir_all(file.parent().unwrap()).map_err(io)?;
                fs::write(&file, body).map_err(io)?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).map_err(io)?;
            }
            overlay(target, &path(&upper), &path(&work))?;
        }
        Ok(())
    }
}
