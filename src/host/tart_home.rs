//! What prepare reads straight from Tart's home instead of asking `tart get`: a freshly
//! cloned VM's `config.json` (spec: Tart's on-disk layout), which holds its OS, CPU count,
//! memory and the image's minimums. Each `tart` command costs a process start and Tart's
//! housekeeping; prepare makes as few as it can before `tart run`. When the file cannot be
//! read, the caller falls back to `tart get`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The smallest CPU count and memory (MiB) a VM accepts: macOS images carry a minimum,
/// and `tart set` refuses anything below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minimum {
    pub cpu: u64,
    pub memory_mib: u64,
}

/// The parts of a VM's `config.json` prepare needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// `darwin` or `linux` (absent in the file means darwin, as in Tart).
    pub os: String,
    pub cpu: u64,
    pub memory_mib: u64,
    pub minimum: Minimum,
    /// `macAddress`.
    pub mac: Option<String>,
}

/// Tart's home, found as Tart finds it: `$TART_HOME`, else `.tart` in Foundation's
/// home directory for the current user, which is `CFFIXED_USER_HOME` or else the user
/// database's entry, never `$HOME` (under launchd `HOME` can point anywhere).
pub fn home() -> Option<PathBuf> {
    resolve(|name| std::env::var_os(name), user_db_home)
}

/// The variables Tart's home is found by, set but empty. The driver takes an empty one as
/// unset, and Tart must too: Tart takes `TART_HOME=""` as a path (Foundation resolves the
/// empty path against the working directory), so its VMs would land where the driver never
/// looks, and prepare would read no image minimum.
pub fn empty_home_vars(env: impl Fn(&str) -> Option<OsString>) -> Vec<&'static str> {
    ["TART_HOME", "CFFIXED_USER_HOME"]
        .into_iter()
        .filter(|name| env(name).is_some_and(|v| v.is_empty()))
        .collect()
}

/// The variables Tart's home is found by whose value is a relative path, each made absolute
/// against `cwd`. Tart resolves a relative one against its own working directory, which is
/// not the stage's for every `tart` the driver starts (the warm pool's replenisher runs in
/// `/`), so the same value would name another home there.
pub fn relative_home_vars(
    env: impl Fn(&str) -> Option<OsString>,
    cwd: &Path,
) -> Vec<(&'static str, PathBuf)> {
    ["TART_HOME", "CFFIXED_USER_HOME"]
        .into_iter()
        .filter_map(|name| {
            let value = PathBuf::from(env(name).filter(|v| !v.is_empty())?);
            value.is_relative().then(|| (name, cwd.join(value)))
        })
        .collect()
}

/// Removes [`empty_home_vars`] from this process's environment and makes
/// [`relative_home_vars`] absolute against the working directory it started in, so that
/// every `tart` it starts, wherever it runs, finds the home the driver found. Called once,
/// first thing in `main`, while the process has a single thread.
pub fn settle_home_vars() {
    for name in empty_home_vars(|name| std::env::var_os(name)) {
        std::env::remove_var(name);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for (name, absolute) in relative_home_vars(|name| std::env::var_os(name), &cwd) {
            std::env::set_var(name, absolute);
        }
    }
}

fn resolve(
    env: impl Fn(&str) -> Option<OsString>,
    user_db_home: impl FnOnce() -> Option<PathBuf>,
) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = set("TART_HOME") {
        return Some(home);
    }
    set("CFFIXED_USER_HOME")
        .or_else(user_db_home)
        .map(|home| home.join(".tart"))
}

/// The current user's home directory in the user database (`getpwuid_r`).
pub fn user_db_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: getpwuid_r writes only into `pw` and `buf` (whose length it is given) and
    // points `found` at `pw` or null; the name is copied out before `buf` goes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        if rc != 0 || found.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir).to_bytes();
        (!dir.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

/// Reads `vms/<vm>/config.json` of Tart's home.
pub fn vm_config(vm: &str) -> Option<VmConfig> {
    let text = std::fs::read(home()?.join("vms").join(vm).join("config.json")).ok()?;
    parse(&text)
}

/// Reads a `config.json` at `path` (a cached image's, in `cache/OCIs/...`).
pub fn config_at(path: &std::path::Path) -> Option<VmConfig> {
    parse(&std::fs::read(path).ok()?)
}

fn parse(text: &[u8]) -> Option<VmConfig> {
    let config: serde_json::Value = serde_json::from_slice(text).ok()?;
    let mib = |key: &str| config[key].as_u64().map(|b| b / 1024 / 1024);
    Some(VmConfig {
        os: config["os"].as_str().unwrap_or("darwin").to_string(),
        cpu: config["cpuCount"].as_u64()?,
        memory_mib: mib("memorySize")?,
        minimum: Minimum {
            cpu: config["cpuCountMin"].as_u64().unwrap_or(0),
            memory_mib: mib("memorySizeMin").unwrap_or(0),
        },
        mac: config["macAddress"].as_str().map(String::from),
    })
}

/// Whether a local VM's directory exists (Tart's own test of "exists").
pub fn vm_exists(home: &Path, vm: &str) -> bool {
    home.join("vms").join(vm).is_dir()
}

/// The digest (`sha256:<hex>`) a cached OCI image resolves to, read where Tart keeps it
/// (spec: on-disk layout): under `cache/OCIs/<host>/<namespace…>/`, a tag is a symlink to
/// `sha256:<hex>`, a directory beside it; a reference by digest is that directory. None
/// when the image is not cached (Tart would pull it). `image` is a vetted OCI reference
/// with its tag or digest ([`crate::job::image::Image`]).
pub fn cached_digest(home: &Path, image: &str) -> Option<String> {
    let (repo, entry) = match image.split_once("@sha256:") {
        Some((repo, hex)) => (repo, format!("sha256:{hex}")),
        None => {
            let (repo, tag) = image.rsplit_once(':').filter(|(_, t)| !t.contains('/'))?;
            (repo, tag.to_string())
        }
    };
    let (host, namespace) = repo.split_once('/')?;
    let dir = home
        .join("cache/OCIs")
        .join(host.replace(':', "%3A"))
        .join(namespace);
    let digest = if entry.starts_with("sha256:") {
        entry
    } else {
        let target = std::fs::read_link(dir.join(&entry)).ok()?;
        target.file_name()?.to_str()?.to_string()
    };
    let hex = digest.strip_prefix("sha256:")?;
    let well_formed = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (well_formed && dir.join(&digest).is_dir()).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    /// Under launchd HOME can be anything; Tart takes its home from the user database.
    #[test]
    fn without_tart_home_tarts_home_is_in_the_user_databases_home_not_in_home() {
        let db = || Some(PathBuf::from("/Users/ci"));
        let home = resolve(env_of(&[("HOME", "/var/empty")]), db);
        assert_eq!(home, Some(PathBuf::from("/Users/ci/.tart")));
    }

    #[test]
    fn tart_home_wins_then_cffixed_user_home() {
        let db = || Some(PathBuf::from("/Users/ci"));
        let env = env_of(&[("TART_HOME", "/Volumes/vms"), ("CFFIXED_USER_HOME", "/x")]);
        assert_eq!(resolve(env, db), Some(PathBuf::from("/Volumes/vms")));
        let env = env_of(&[("TART_HOME", ""), ("CFFIXED_USER_HOME", "/x")]);
        assert_eq!(resolve(env, db), Some(PathBuf::from("/x/.tart")));
    }

    /// An empty TART_HOME is unset for the driver (`resolve`) and is removed before any
    /// `tart` starts, since Tart would take it as its working directory.
    #[test]
    fn an_empty_tart_home_is_treated_as_unset_and_removed_for_tart() {
        let env = env_of(&[("TART_HOME", ""), ("CFFIXED_USER_HOME", "/x")]);
        assert_eq!(empty_home_vars(&env), ["TART_HOME"]);
        assert_eq!(resolve(env, || None), Some(PathBuf::from("/x/.tart")));
        let env = env_of(&[("TART_HOME", "/Volumes/vms"), ("CFFIXED_USER_HOME", "")]);
        assert_eq!(empty_home_vars(env), ["CFFIXED_USER_HOME"]);
        assert!(empty_home_vars(env_of(&[("HOME", "")])).is_empty());
    }

    #[test]
    fn the_user_database_knows_the_current_user() {
        assert!(user_db_home().is_some_and(|h| h.is_absolute()));
    }

    #[test]
    fn a_macos_config_gives_os_resources_and_minimums() {
        let text = br#"{ "version" : 1, "cpuCountMin" : 2, "arch" : "arm64", "os" : "darwin",
            "cpuCount" : 4, "memorySizeMin" : 4294967296, "memorySize" : 8589934592,
            "macAddress" : "7a:47:bb:5f:97:c9" }"#;
        let c = parse(text).unwrap();
        assert_eq!((c.os.as_str(), c.cpu, c.memory_mib), ("darwin", 4, 8192));
        assert_eq!((c.minimum.cpu, c.minimum.memory_mib), (2, 4096));
    }

    #[test]
    fn a_config_without_os_is_darwin_and_one_without_resources_is_unknown() {
        let c = parse(br#"{"cpuCount": 2, "memorySize": 2147483648}"#).unwrap();
        assert_eq!(c.os, "darwin");
        assert_eq!(parse(br#"{"os": "linux"}"#), None);
    }

    #[test]
    fn a_cached_tag_resolves_through_its_symlink_and_a_digest_to_its_directory() {
        let home = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(32);
        let repo = home
            .path()
            .join("cache/OCIs/registry.local%3A5000/team/img");
        std::fs::create_dir_all(repo.join(format!("sha256:{hex}"))).unwrap();
        std::os::unix::fs::symlink(format!("sha256:{hex}"), repo.join("1.0")).unwrap();
        let digest = Some(format!("sha256:{hex}"));
        assert_eq!(
            cached_digest(home.path(), "registry.local:5000/team/img:1.0"),
            digest
        );
        assert_eq!(
            cached_digest(
                home.path(),
                &format!("registry.local:5000/team/img@sha256:{hex}")
            ),
            digest
        );
        assert_eq!(
            cached_digest(home.path(), "registry.local:5000/team/img:2.0"),
            None
        );
        let other = "cd".repeat(32);
        assert_eq!(
            cached_digest(
                home.path(),
                &format!("registry.local:5000/team/img@sha256:{other}")
            ),
            None
        );
        // A tag whose digest directory is gone is not cached (Tart would pull it).
        std::os::unix::fs::symlink(format!("sha256:{other}"), repo.join("dangling")).unwrap();
        assert_eq!(
            cached_digest(home.path(), "registry.local:5000/team/img:dangling"),
            None
        );
    }

    /// Tart resolves a relative TART_HOME against its own working directory, which the
    /// replenisher moves to `/`: the driver pins it to where it started.
    #[test]
    fn a_relative_tart_home_is_made_absolute_against_the_starting_directory() {
        let env = env_of(&[("TART_HOME", "vms"), ("CFFIXED_USER_HOME", "/x")]);
        assert_eq!(
            relative_home_vars(env, Path::new("/srv/runner")),
            [("TART_HOME", PathBuf::from("/srv/runner/vms"))]
        );
        let env = env_of(&[("TART_HOME", ""), ("CFFIXED_USER_HOME", "./home")]);
        assert_eq!(
            relative_home_vars(env, Path::new("/r")),
            [("CFFIXED_USER_HOME", PathBuf::from("/r/./home"))]
        );
    }
}
