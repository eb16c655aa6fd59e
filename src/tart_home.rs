//! What prepare reads straight from Tart's home instead of asking `tart get`: a freshly
//! cloned VM's `config.json` (spec: Tart's on-disk layout), which holds its OS, CPU count,
//! memory and the image's minimums. Each `tart` command costs a process start and Tart's
//! housekeeping; prepare makes as few as it can before `tart run`. When the file cannot be
//! read, the caller falls back to `tart get`.

use std::path::PathBuf;

use crate::host::Minimum;

/// The parts of a VM's `config.json` prepare needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// `darwin` or `linux` (absent in the file means darwin, as in Tart).
    pub os: String,
    pub cpu: u64,
    pub memory_mib: u64,
    pub minimum: Minimum,
}

/// `$TART_HOME`, or `~/.tart` as Tart defaults it.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("TART_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tart")))
}

/// Reads `vms/<vm>/config.json` of Tart's home.
pub fn vm_config(vm: &str) -> Option<VmConfig> {
    let text = std::fs::read(home()?.join("vms").join(vm).join("config.json")).ok()?;
    parse(&text)
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
