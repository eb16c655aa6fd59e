//! [`Dir`]: a verified directory of the state directory, held open. Files in it are
//! reached relative to the held descriptor with `O_NOFOLLOW` and must belong to the
//! runner's user; sub-directories get the same checks as the state directory itself.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::refusal::{check_level, choose_another, uid, Refusal};

/// An open, verified directory inside the state directory. Everything in it is reached
/// through the held descriptor, never through a path that could be swapped.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    fd: OwnedFd,
}

fn c_name(name: &str) -> Result<CString> {
    anyhow::ensure!(
        !name.is_empty() && name != "." && name != ".." && !name.contains('/'),
        "`{name}` is not a plain file name"
    );
    CString::new(name).context("file name with a NUL byte")
}

fn open_dir_at(at: i32, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: openat with a valid NUL-terminated path; the result is a fresh descriptor.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat_fd(fd: i32) -> std::io::Result<libc::stat> {
    // SAFETY: fstat fills the struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `st_mode` is 16 bits on macOS, 32 on Linux.
#[allow(clippy::useless_conversion)]
fn mode_bits(st: &libc::stat) -> u32 {
    u32::from(st.st_mode)
}

fn is_type(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

impl Dir {
    /// Opens a directory by path after the checks of [`StateDir::open`] for its own level
    /// (the supervisor gets its VM's record this way, from the prepare that verified the
    /// levels above).
    pub fn open_verified(path: &Path) -> Result<Dir> {
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot inspect the state directory {}", path.display()))?;
        check_level(path, &meta)?;
        let fd = open_dir_at(libc::AT_FDCWD, path).map_err(|e| {
            anyhow::Error::new(Refusal {
                problem: format!("cannot open the state directory {}: {e}", path.display()),
                fix: choose_another(path),
            })
        })?;
        let dir = Dir {
            path: path.to_path_buf(),
            fd,
        };
        // The directory we opened must be the one we checked (not swapped in between).
        let held = dir.fstat()?;
        if held.st_dev as u64 != meta.dev() || held.st_ino as u64 != meta.ino() {
            anyhow::bail!(Refusal {
                problem: format!(
                    "state directory {} was replaced while the driver opened it",
                    path.display()
                ),
                fix: choose_another(path),
            });
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fstat(&self) -> Result<libc::stat> {
        fstat_fd(self.fd.as_raw_fd())
            .with_context(|| format!("cannot inspect {}", self.path.display()))
    }

    /// Metadata of an entry, without following a symbolic link; None if absent.
    fn stat_at(&self, name: &str) -> Result<Option<libc::stat>> {
        let c = c_name(name)?;
        // SAFETY: fstatat on our descriptor fills the struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(Some(st));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(err).with_context(|| format!("cannot inspect {}", self.path.join(name).display()))
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        matches!(self.stat_at(name), Ok(Some(_)))
    }

    /// A sub-directory, created (mode 0700) if missing, after the checks of every level.
    pub fn subdir(&self, name: &str) -> Result<Dir> {
        let c = c_name(name)?;
        // SAFETY: mkdirat on our descriptor with a valid name.
        let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(err)
                    .with_context(|| format!("cannot create {}", self.path.join(name).display()));
            }
        }
        self.open_subdir(name)
    }

    /// A sub-directory if it exists, after the checks.
    pub fn existing_subdir(&self, name: &str) -> Result<Option<Dir>> {
        if self.stat_at(name)?.is_none() {
            return Ok(None);
        }
        self.open_subdir(name).map(Some)
    }

    fn open_subdir(&self, name: &str) -> Result<Dir> {
        let path = self.path.join(name);
        let refuse = |problem: String| {
            anyhow::Error::new(Refusal {
                problem,
                fix: choose_another(&self.path),
            })
        };
        let fd = match open_dir_at(self.fd.as_raw_fd(), Path::new(name)) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                return Err(refuse(format!(
                    "state directory level {} is a symbolic link or not a directory",
                    path.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let dir = Dir { path, fd };
        let st = dir.fstat()?;
        if st.st_uid != uid() {
            return Err(refuse(format!(
                "state directory level {} belongs to uid {}, not to the runner's user (uid {})",
                dir.path.display(),
                st.st_uid,
                uid()
            )));
        }
        if mode_bits(&st) & 0o022 != 0 {
            return Err(refuse(format!(
                "state directory level {} has mode {:o}: others could write there",
                dir.path.display(),
                mode_bits(&st) & 0o7777
            )));
        }
        Ok(dir)
    }

    /// Opens a file of this directory with `O_NOFOLLOW`; it must be a regular file of ours.
    /// `flags` are `open(2)` flags such as `O_RDWR | O_CREAT`; `O_CLOEXEC` is added.
    pub fn open(&self, name: &str, flags: i32) -> Result<File> {
        let path = self.path.join(name);
        let c = c_name(name)?;
        // SAFETY: openat on our descriptor with a valid name; the result is fresh.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot open {}", path.display()));
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat_fd(fd).with_context(|| format!("cannot inspect {}", path.display()))?;
        if !is_type(&st, libc::S_IFREG) || st.st_uid != uid() {
            anyhow::bail!(Refusal {
                problem: format!(
                    "{} is not a regular file of the runner's user (uid {})",
                    path.display(),
                    st.st_uid
                ),
                fix: choose_another(&self.path),
            });
        }
        Ok(file)
    }

    /// Creates a named pipe (mode 0600).
    pub fn make_fifo(&self, name: &str) -> Result<()> {
        let c = c_name(name)?;
        // SAFETY: mkfifoat on our descriptor with a valid name.
        if unsafe { libc::mkfifoat(self.fd.as_raw_fd(), c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot create {}", self.path.join(name).display()));
        }
        Ok(())
    }

    /// The whole content of a file, or None if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        if self.stat_at(name)?.is_none() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        self.open(name, libc::O_RDONLY)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", self.path.join(name).display()))?;
        Ok(Some(bytes))
    }

    pub fn read_string(&self, name: &str) -> Option<String> {
        self.read(name)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Replaces a file atomically: readers see the old or the new content, never a part.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = format!("{name}.tmp");
        self.remove(&tmp)?;
        let mut f = self.open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.join(&tmp).display()))?;
        drop(f);
        let (from, to) = (c_name(&tmp)?, c_name(name)?);
        // SAFETY: renameat within our directory, valid names.
        let rc = unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                from.as_ptr(),
                self.fd.as_raw_fd(),
                to.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot write {}", self.path.join(name).display()));
        }
        Ok(())
    }

    /// Renames `from` to `to` within this directory, replacing `to` (one atomic step).
    /// Whether `from` existed.
    pub fn rename(&self, from: &str, to: &str) -> Result<bool> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        // SAFETY: renameat within our directory, valid names.
        let rc = unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                self.fd.as_raw_fd(),
                t.as_ptr(),
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(false);
        }
        Err(err)
            .with_context(|| format!("cannot rename {} to {to}", self.path.join(from).display()))
    }

    /// Creates `name` holding `bytes` unless it exists: readers see all of it or nothing,
    /// and of creators racing for it exactly one wins (true); the others leave it as the
    /// winner wrote it (false). The content goes to a file of this call's own first, which
    /// is then linked in, since a link never replaces what is there.
    pub fn create_once(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        use std::io::Write;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let target = c_name(name)?;
        let tmp = format!(
            "{name}.{}-{}.new",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut f = self.open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
        let written = f
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.join(&tmp).display()));
        drop(f);
        let linked = written.and_then(|()| {
            let from = c_name(&tmp)?;
            // SAFETY: linkat within our directory, valid names, no flags.
            let rc = unsafe {
                libc::linkat(
                    self.fd.as_raw_fd(),
                    from.as_ptr(),
                    self.fd.as_raw_fd(),
                    target.as_ptr(),
                    0,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EEXIST) {
                return Ok(false);
            }
            Err(err).with_context(|| format!("cannot create {}", self.path.join(name).display()))
        });
        self.remove(&tmp)?;
        linked
    }

    /// A file opened for appending, created (0600) if missing.
    pub fn append(&self, name: &str) -> Result<File> {
        self.open(name, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)
    }

    /// Removes a file (not a directory); absent is fine.
    pub fn remove(&self, name: &str) -> Result<()> {
        let c = c_name(name)?;
        // SAFETY: unlinkat on our descriptor with a valid name.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(err)
                    .with_context(|| format!("cannot remove {}", self.path.join(name).display()));
            }
        }
        Ok(())
    }

    /// Whether `name` is a Unix socket that this user owns: only then does the driver talk
    /// to it. Anything else (absent, another owner, a link) is not ours to use.
    pub fn is_own_socket(&self, name: &str) -> bool {
        matches!(self.stat_at(name), Ok(Some(st)) if is_type(&st, libc::S_IFSOCK) && st.st_uid == uid())
    }

    /// Names of the entries.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.path)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes a sub-directory and everything in it (std's removal does not follow links).
    pub fn remove_subdir(&self, name: &str) -> Result<()> {
        c_name(name)?;
        let path = self.path.join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Whether `other` is a handle of the same directory (device and inode).
    pub fn same_as(&self, other: &Dir) -> Result<bool> {
        let (a, b) = (self.fstat()?, other.fstat()?);
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// Whether `file` (held open) is still the file named `name` here: a lock belongs to an
    /// inode, and one whose name was meanwhile removed and created anew guards nothing.
    pub fn still_names(&self, name: &str, file: &File) -> Result<bool> {
        let held = fstat_fd(file.as_raw_fd())?;
        Ok(
            matches!(self.stat_at(name)?, Some(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino),
        )
    }
}
