//! Mach-O `LC_UUID`: macOS 15+ requires executables that ask for the Local Network
//! permission to carry a UUID; a binary without one is silently refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::report::Check;

const LC_UUID: u32 = 0x1b;

const NOT_MACOS: &str = "not a macOS host: LC_UUID matters only for macOS 15+'s Local Network permission; run doctor on the Mac";

/// gitlab-runner's `LC_UUID`; `runner` is what the gitlab-runner check found.
pub(super) fn check_runner_lc_uuid(runner: Option<&Path>) -> Check {
    const NAME: &str = "gitlab-runner LC_UUID";
    if !cfg!(target_os = "macos") {
        return Check::skip(NAME, NOT_MACOS);
    }
    match runner {
        Some(path) => uuid_check(
            NAME,
            path,
            "install gitlab-runner 17.6 or later (Homebrew's build carries LC_UUID), or allow local-network access system-wide as in Apple's TN3179",
        ),
        None => Check::skip(NAME, "gitlab-runner not found"),
    }
}

/// This driver's own `LC_UUID`.
pub(super) fn check_driver_lc_uuid() -> Check {
    const NAME: &str = "driver LC_UUID";
    if !cfg!(target_os = "macos") {
        return Check::skip(NAME, NOT_MACOS);
    }
    match std::env::current_exe() {
        Ok(path) => uuid_check(
            NAME,
            &path,
            "rebuild the driver with Apple's default linker settings (do not link with -no_uuid)",
        ),
        Err(_) => Check::skip(NAME, "cannot locate this executable"),
    }
}

pub(super) fn uuid_check(name: &str, path: &Path, fix: &str) -> Check {
    match macho_uuids(path) {
        Ok(slices) if slices.iter().all(Option::is_some) => Check::pass(
            name,
            format!(
                "{}: {}",
                path.display(),
                slices.into_iter().flatten().collect::<Vec<_>>().join(", ")
            ),
        ),
        Ok(_) => Check::fail(
            name,
            format!(
                "{} has no LC_UUID: macOS 15+ denies it the Local Network permission, so jobs hang at \"waiting for SSH\"",
                path.display()
            ),
            fix,
        ),
        Err(e) => Check::warn(
            name,
            format!("{}: {e}", path.display()),
            "point at the real executable, not a wrapper script",
        ),
    }
}

/// The LC_UUID of each architecture slice of a Mach-O file (None for a slice without one).
pub(super) fn macho_uuids(path: &Path) -> Result<Vec<Option<String>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|_| "truncated Mach-O file".to_string())?;
        Ok(buf)
    };
    let head = read(0, 8).map_err(|_| "not a Mach-O file".to_string())?;
    let magic = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    match magic {
        // Universal binaries: a big-endian table of slices. Java class files share the
        // magic but have a large "count" (their version), so bound it.
        0xcafe_babe | 0xcafe_babf => {
            let wide = magic == 0xcafe_babf;
            let count = be32(&head, 4) as usize;
            if count == 0 || count > 32 {
                return Err("not a Mach-O file".into());
            }
            let entry = if wide { 32 } else { 20 };
            let table = read(8, count * entry)?;
            (0..count)
                .map(|i| {
                    let e = &table[i * entry..(i + 1) * entry];
                    let offset = if wide {
                        be64(e, 8)
                    } else {
                        u64::from(be32(e, 8))
                    };
                    thin_uuid(&read, offset)
                })
                .collect()
        }
        _ => Ok(vec![thin_uuid(&read, 0)?]),
    }
}

pub(super) fn thin_uuid(
    read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
    offset: u64,
) -> Result<Option<String>, String> {
    let header = read(offset, 32).or_else(|_| read(offset, 28))?;
    let (big, wide) = match header[0..4] {
        [0xfe, 0xed, 0xfa, 0xce] => (true, false),
        [0xfe, 0xed, 0xfa, 0xcf] => (true, true),
        [0xce, 0xfa, 0xed, 0xfe] => (false, false),
        [0xcf, 0xfa, 0xed, 0xfe] => (false, true),
        _ => return Err("not a Mach-O file".into()),
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if big {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let ncmds = u32_at(&header, 16) as usize;
    let size = u32_at(&header, 20) as usize;
    if size > 16 << 20 {
        return Err("implausible load-command size".into());
    }
    let cmds = read(offset + if wide { 32 } else { 28 }, size)?;
    let mut at = 0;
    for _ in 0..ncmds {
        if at + 8 > cmds.len() {
            return Err("truncated load commands".into());
        }
        let cmd = u32_at(&cmds, at);
        let cmdsize = u32_at(&cmds, at + 4) as usize;
        if cmdsize < 8 || at + cmdsize > cmds.len() {
            return Err("corrupt load command".into());
        }
        if cmd == LC_UUID && cmdsize >= 24 {
            return Ok(Some(format_uuid(&cmds[at + 8..at + 24])));
        }
        at += cmdsize;
    }
    Ok(None)
}

pub(super) fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thin 64-bit little-endian Mach-O with the given load commands.
    fn thin(cmds: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (cmd, payload) in cmds {
            body.extend(cmd.to_le_bytes());
            body.extend((8 + payload.len() as u32).to_le_bytes());
            body.extend(payload);
        }
        let mut out = Vec::new();
        out.extend(0xfeed_facf_u32.to_le_bytes());
        out.extend(0x0100_000c_u32.to_le_bytes()); // arm64
        out.extend(0u32.to_le_bytes());
        out.extend(2u32.to_le_bytes()); // MH_EXECUTE
        out.extend((cmds.len() as u32).to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(body);
        out
    }

    fn uuid_cmd() -> (u32, Vec<u8>) {
        (LC_UUID, (1..=16).collect())
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn thin_macho_uuid_is_found_after_other_commands() {
        let f = write(&thin(&[(0x19, vec![0; 64]), uuid_cmd()]));
        assert_eq!(
            macho_uuids(f.path()).unwrap(),
            vec![Some("01020304-0506-0708-090A-0B0C0D0E0F10".to_string())]
        );
    }

    #[test]
    fn thin_macho_without_uuid_reports_none() {
        let f = write(&thin(&[(0x19, vec![0; 64])]));
        assert_eq!(macho_uuids(f.path()).unwrap(), vec![None]);
    }

    #[test]
    fn fat_macho_reports_each_slice() {
        let a = thin(&[uuid_cmd()]);
        let b = thin(&[(0x2, vec![0; 16])]);
        let mut fat = Vec::new();
        fat.extend(0xcafe_babe_u32.to_be_bytes());
        fat.extend(2u32.to_be_bytes());
        let first = 4096u32;
        let second = first + 4096;
        for (off, len) in [(first, a.len()), (second, b.len())] {
            fat.extend(0u32.to_be_bytes());
            fat.extend(0u32.to_be_bytes());
            fat.extend(off.to_be_bytes());
            fat.extend((len as u32).to_be_bytes());
            fat.extend(12u32.to_be_bytes());
        }
        fat.resize(first as usize, 0);
        fat.extend(&a);
        fat.resize(second as usize, 0);
        fat.extend(&b);
        let f = write(&fat);
        let slices = macho_uuids(f.path()).unwrap();
        assert_eq!(slices.len(), 2);
        assert!(slices[0].is_some() && slices[1].is_none());
    }

    #[test]
    fn scripts_and_elf_files_are_not_macho() {
        let f = write(b"#!/bin/sh\necho hi\n");
        assert!(macho_uuids(f.path()).is_err());
        let f = write(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert!(macho_uuids(f.path()).is_err());
    }

    #[test]
    fn truncated_load_commands_are_an_error() {
        let mut bytes = thin(&[uuid_cmd()]);
        bytes.truncate(40);
        let f = write(&bytes);
        assert!(macho_uuids(f.path()).is_err());
    }
}
