//! The host's DHCP pool for Tart's shared (NAT) network: macOS's bootpd hands each new MAC
//! address an IP for its lease time (a day by default) from a pool of about 253 addresses,
//! and records it in `/var/db/dhcpd_leases`, where `tart ip` looks. Every clone with a new
//! MAC takes a new lease, so about 253 new MACs a day exhaust the pool, and from then on
//! VMs boot without an IP.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

pub const LEASES_FILE: &str = "/var/db/dhcpd_leases";
pub const BOOTPD_PLIST: &str = "/etc/bootpd.plist";
/// bootpd's lease time when nothing configures another.
pub const DEFAULT_LEASE_SECS: u64 = 86_400;
/// Addresses of the default `192.168.64.0/24` network that bootpd hands out (.2 to .254).
pub const DEFAULT_POOL: u64 = 253;

/// One entry of the leases file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: String,
    pub hw_address: String,
    /// When the lease expires, in seconds since the epoch.
    pub expires: u64,
}

/// What could be read of a leases file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub leases: Vec<Lease>,
    /// Lines (1-based) that were not in bootpd's format, skipped with the lease they were
    /// in: one bad line must not hide every other lease (the re-MAC before `tart run` and
    /// doctor's pool count rely on them). Tart refuses the whole file for any of them
    /// (`unexpected DHCPD leases file format on line N`, so `tart ip` fails), which
    /// doctor reports.
    pub malformed: Vec<usize>,
}

/// Parses bootpd's leases file: `{`, `key=value` lines, `}` per lease, line by line as
/// Tart's `Leases.swift` reads it: lines split at `\n` only, `{` and `}` only when alone
/// on their line (no whitespace around them, no `\r`), leading spaces and tabs dropped
/// from a `key=value` line and nothing else (a trailing space stays in the value), a
/// line of only spaces and tabs skipped. A line Tart refuses is named in
/// [`Parsed::malformed`] and its lease skipped; the other leases are kept.
pub fn parse_leases(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    // The open lease: the line of its `{` and its fields.
    let mut entry: Option<(usize, Vec<(&str, &str)>)> = None;
    // A `key=value` outside any `{ }`: Tart takes it as a lease's body, so a `{` after it
    // is refused and the file must not end there.
    let mut loose: Option<usize> = None;
    for (n, line) in text.split('\n').enumerate() {
        let n = n + 1;
        match line {
            "" => {}
            "{" => {
                if entry.is_some() || loose.is_some() {
                    parsed.malformed.push(n);
                }
                entry = Some((n, Vec::new()));
                loose = None;
            }
            "}" => {
                let fields = match (entry.take(), loose.take()) {
                    (Some((_, fields)), _) if !fields.is_empty() => fields,
                    (None, Some(_)) => continue,
                    _ => {
                        parsed.malformed.push(n);
                        continue;
                    }
                };
                let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                let (Some(ip), Some(hw), Some(lease)) =
                    (get("ip_address"), get("hw_address"), get("lease"))
                else {
                    continue;
                };
                // A lease value that is not hex is skipped alone, as Tart skips it.
                let Ok(expires) = u64::from_str_radix(lease.trim_start_matches("0x"), 16) else {
                    continue;
                };
                parsed.leases.push(Lease {
                    ip: ip.to_string(),
                    hw_address: hw.split_once(',').map_or(hw, |(_, mac)| mac).to_string(),
                    expires,
                });
            }
            _ => {
                let content = line.trim_start_matches([' ', '\t']);
                if content.is_empty() {
                    continue;
                }
                // Tart's split drops empty parts: `key=` and `=value` are a key alone.
                match content.split_once('=') {
                    Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                        match &mut entry {
                            Some((_, fields)) => fields.push((key, value)),
                            None => {
                                loose.get_or_insert(n);
                            }
                        }
                    }
                    _ => parsed.malformed.push(n),
                }
            }
        }
    }
    // Tart refuses a file that ends inside a lease ("truncated").
    if let Some(open) = entry.map(|(open, _)| open).or(loose) {
        parsed.malformed.push(open);
    }
    parsed
}

/// The lease time and pool size bootpd runs with, from its plist (`lease_max`, and
/// `net_range` of the first subnet), each falling back to macOS's default.
pub fn bootpd_config(plist: &str) -> (u64, u64) {
    let integer_after = |key: &str| -> Option<u64> {
        let at = plist.find(&format!("<key>{key}</key>"))?;
        let rest = &plist[at..];
        let start = rest.find("<integer>")? + "<integer>".len();
        let end = rest[start..].find("</integer>")? + start;
        rest[start..end].trim().parse().ok()
    };
    let pool =
        net_range(plist).map(|(first, last)| u64::from(u32::from(last) - u32::from(first)) + 1);
    (
        integer_after("lease_max").unwrap_or(DEFAULT_LEASE_SECS),
        pool.unwrap_or(DEFAULT_POOL),
    )
}

/// The addresses bootpd hands to guests on Tart's shared NAT network: its plist's first
/// `net_range`, else macOS's default, 192.168.64.2 to 192.168.64.254.
pub fn nat_guest_range(plist: Option<&str>) -> (Ipv4Addr, Ipv4Addr) {
    plist.and_then(net_range).unwrap_or((
        Ipv4Addr::new(192, 168, 64, 2),
        Ipv4Addr::new(192, 168, 64, 254),
    ))
}

/// The first `net_range` of bootpd's plist (its first and last address), if well formed.
fn net_range(plist: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let at = plist.find("<key>net_range</key>")?;
    let ips: Vec<Ipv4Addr> = plist[at..]
        .split("<string>")
        .skip(1)
        .take(2)
        .filter_map(|s| s.split("</string>").next()?.trim().parse().ok())
        .collect();
    let [first, last] = ips[..] else { return None };
    (first <= last).then_some((first, last))
}

/// [`nat_guest_range`] of this host's bootpd (its plist exists once vmnet has run).
pub fn host_nat_guest_range() -> (Ipv4Addr, Ipv4Addr) {
    nat_guest_range(std::fs::read_to_string(BOOTPD_PLIST).ok().as_deref())
}

/// How full the pool is.
#[derive(Debug, Clone)]
pub struct PoolUse {
    /// Leases not yet expired: addresses bootpd will not give to a new MAC.
    pub active: u64,
    pub pool: u64,
    pub lease_secs: u64,
    /// Lines of the leases file not in bootpd's format (skipped).
    pub malformed: Vec<usize>,
}

impl PoolUse {
    pub fn read(leases_file: &Path, bootpd_plist: &Path) -> Result<PoolUse> {
        let text = match std::fs::read_to_string(leases_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", leases_file.display()))
            }
        };
        let Parsed { leases, malformed } = parse_leases(&text);
        let (lease_secs, pool) =
            bootpd_config(&std::fs::read_to_string(bootpd_plist).unwrap_or_default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut active: Vec<&str> = leases
            .iter()
            .filter(|l| l.expires > now)
            .map(|l| l.ip.as_str())
            .collect();
        active.sort_unstable();
        active.dedup();
        Ok(PoolUse {
            active: active.len() as u64,
            pool,
            lease_secs,
            malformed,
        })
    }

    pub fn exhausted(&self) -> bool {
        self.active >= self.pool
    }

    /// Four fifths used: at a day's lease time, hours from running out.
    pub fn nearly_exhausted(&self) -> bool {
        self.active * 5 >= self.pool * 4
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of {} addresses of the VM network are leased (lease time {})",
            self.active,
            self.pool,
            human_secs(self.lease_secs)
        )
    }
}

/// The unexpired leases of `/var/db/dhcpd_leases` (under the host root); none when the
/// file is missing or unreadable: this check only ever adds a MAC change.
pub fn active_leases() -> Vec<Lease> {
    let path = crate::host::host_root::path(LEASES_FILE);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let now = now_secs();
    parse_leases(&text)
        .leases
        .into_iter()
        .filter(|l| l.expires > now)
        .collect()
}

/// A MAC address as bootpd and Tart may write it (`7a:7:0:..` or `7A:07:00:..`), in one form.
pub fn normal_mac(mac: &str) -> String {
    mac.split(':')
        .map(|o| format!("{:0>2}", o.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(":")
}

/// The lease that makes booting a clone with `mac` unsafe, if any. bootpd answers a MAC with
/// the address of its lease, so a clone that kept its image's MAC while another VM with that
/// MAC runs (another TART_HOME's clone of the same image: Tart re-MACs only against its own
/// VMs) shares that VM's address, and `tart ip` names the other VM. Leases this runner's
/// own earlier VMs took (`own`, as remembered) are safe: reusing them keeps the pool small.
pub fn unsafe_lease<'a>(leases: &'a [Lease], mac: &str, own: &[Lease]) -> Option<&'a Lease> {
    let mac = normal_mac(mac);
    leases.iter().find(|l| {
        normal_mac(&l.hw_address) == mac
            && !own
                .iter()
                .any(|o| normal_mac(&o.hw_address) == mac && o.expires == l.expires)
    })
}

/// The leases this runner's own VMs took: `own-leases` in a state directory, one
/// `<mac> <expiry>` per line, the newest 64.
pub struct OwnLeases {
    dir: crate::host::state_dir::Dir,
}

const OWN_LEASES: &str = "own-leases";

impl OwnLeases {
    pub fn open(root: &crate::host::state_dir::StateDir) -> Result<OwnLeases> {
        Ok(OwnLeases {
            dir: root.subdir("dhcp")?,
        })
    }

    pub fn list(&self) -> Vec<Lease> {
        let text = self.dir.read_string(OWN_LEASES).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (mac, expires) = line.split_once(' ')?;
                Some(Lease {
                    ip: String::new(),
                    hw_address: mac.to_string(),
                    expires: expires.trim().parse().ok()?,
                })
            })
            .collect()
    }

    /// Remembers the lease a VM of this runner now holds for `mac`.
    pub fn remember(&self, mac: &str) -> Result<()> {
        let mac = normal_mac(mac);
        let Some(lease) = active_leases()
            .into_iter()
            .filter(|l| normal_mac(&l.hw_address) == mac)
            .max_by_key(|l| l.expires)
        else {
            return Ok(());
        };
        let mut own = self.list();
        own.retain(|o| normal_mac(&o.hw_address) != mac);
        own.push(lease);
        let start = own.len().saturating_sub(64);
        let text: String = own[start..]
            .iter()
            .map(|l| format!("{} {}\n", normal_mac(&l.hw_address), l.expires))
            .collect();
        self.dir.write_atomic(OWN_LEASES, text.as_bytes())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What to do about a full pool.
pub const FIX: &str = "lower bootpd's lease time to 10 minutes: `sudo defaults write /Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist bootpd -dict DHCPLeaseTimeSecs -int 600`; then, while no VM runs, `sudo rm /var/db/dhcpd_leases` frees the old leases (or use --softnet, which needs no lease)";

fn human_secs(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "{\n\tname=tartdrv-a-1\n\tip_address=192.168.64.2\n\thw_address=1,7a:47:bb:5f:97:c9\n\tidentifier=1,7a:47:bb:5f:97:c9\n\tlease=0x6a2b3c4d\n}\n{\n\tname=ubuntu\n\tip_address=192.168.64.3\n\thw_address=ff,f1:f5:dd:7f:0:2:0:0:ab:11:1\n\tidentifier=ff,f1:f5:dd:7f:0:2:0:0:ab:11:1\n\tlease=0x10\n}\n";

    #[test]
    fn leases_parse_in_bootpds_format() {
        let Parsed { leases, malformed } = parse_leases(TWO);
        assert!(malformed.is_empty(), "{malformed:?}");
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].ip, "192.168.64.2");
        assert_eq!(leases[0].hw_address, "7a:47:bb:5f:97:c9");
        assert_eq!(leases[0].expires, 0x6a2b3c4d);
        assert_eq!(leases[1].expires, 0x10);
    }

    /// One bad line (a torn write, another program's garbage) costs its own lease at most,
    /// never the others: the re-MAC before `tart run` needs every lease it can read.
    #[test]
    fn malformed_lines_are_skipped_and_the_other_leases_kept() {
        let text = format!(
            "garbage\n{{\nip_address 1.2.3.4\n}}\n}}\n{{\n\tip_address=192.168.64.9\n\thw_address=1,aa:bb:cc:dd:ee:ff\n\tlease=0xnothex\n}}\n{TWO}{{\n\tip_address=192.168.64.7\n"
        );
        let Parsed { leases, malformed } = parse_leases(&text);
        let ips: Vec<&str> = leases.iter().map(|l| l.ip.as_str()).collect();
        assert_eq!(ips, ["192.168.64.2", "192.168.64.3"]);
        // `garbage`, the line without `=`, the `}` of a lease with no body left (Tart
        // refuses a `}` before any `key=value`), the stray `}` and the last lease, never
        // closed; the lease whose value is not hex is skipped alone (as Tart does).
        assert_eq!(malformed, [1, 3, 4, 5, 25], "{text}");
    }

    /// A lease whose `}` is missing is dropped, and the next one is read.
    #[test]
    fn a_lease_left_open_does_not_swallow_the_next() {
        let text = format!("{{\n\tip_address=192.168.64.8\n{TWO}");
        let Parsed { leases, malformed } = parse_leases(&text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].ip, "192.168.64.2");
        // Tart refuses the second `{` (line 3), not the first.
        assert_eq!(malformed, [3]);
    }

    /// Tart compares `{` and `}` whole and drops only leading spaces and tabs: lines it
    /// refuses are named, whatever whitespace a lenient reader would forgive.
    #[test]
    fn lines_tart_refuses_for_their_whitespace_are_malformed() {
        let lease = |open: &str, close: &str| {
            format!("{open}\n\tip_address=192.168.64.2\n\thw_address=1,7a:47:bb:5f:97:c9\n\tlease=0x6a2b3c4d\n{close}\n")
        };
        assert_eq!(
            parse_leases(&lease("{", "}")).malformed,
            Vec::<usize>::new()
        );
        // Tart refuses ` {`, then takes the fields as a body that `}` closes.
        assert_eq!(parse_leases(&lease(" {", "}")).malformed, [1]);
        assert_eq!(parse_leases(&lease("{", "} ")).malformed, [5, 1]);
        assert_eq!(parse_leases(&lease("{\r", "}")).malformed, [1]);
        assert_eq!(parse_leases("{\n\tkey=\n}\n").malformed, [2, 3]);
        assert_eq!(
            parse_leases(&format!("{}  \t\n", lease("{", "}"))).malformed,
            Vec::<usize>::new()
        );
    }

    fn lease(mac: &str, expires: u64) -> Lease {
        Lease {
            ip: "192.168.64.2".into(),
            hw_address: mac.into(),
            expires,
        }
    }

    #[test]
    fn a_lease_of_the_clones_mac_is_unsafe_unless_this_runner_took_it() {
        let leases = [lease("7a:7:0:5f:97:c9", 100)];
        assert!(unsafe_lease(&leases, "7a:07:00:5f:97:c9", &[]).is_some());
        assert!(unsafe_lease(&leases, "7a:07:00:5f:97:c8", &[]).is_none());
        // Our own earlier VM's lease, untouched since: reused, no new lease taken.
        let own = [lease("7a:07:00:5f:97:c9", 100)];
        assert!(unsafe_lease(&leases, "7a:07:00:5f:97:c9", &own).is_none());
        // Granted again since (another VM with the MAC booted): unsafe again.
        let own = [lease("7a:07:00:5f:97:c9", 50)];
        assert!(unsafe_lease(&leases, "7a:07:00:5f:97:c9", &own).is_some());
    }

    #[test]
    fn bootpd_plist_gives_lease_time_and_pool_size() {
        let plist = "<dict><key>Subnets</key><array><dict><key>lease_max</key>\n<integer>600</integer><key>net_range</key><array><string>192.168.64.2</string><string>192.168.64.254</string></array></dict></array></dict>";
        assert_eq!(bootpd_config(plist), (600, 253));
        assert_eq!(bootpd_config(""), (DEFAULT_LEASE_SECS, DEFAULT_POOL));
    }

    #[test]
    fn the_nat_guest_range_is_bootpds_net_range_or_macos_default() {
        let default = (
            Ipv4Addr::new(192, 168, 64, 2),
            Ipv4Addr::new(192, 168, 64, 254),
        );
        assert_eq!(nat_guest_range(None), default);
        assert_eq!(nat_guest_range(Some("<dict></dict>")), default);
        let plist = "<key>net_range</key><array><string>10.9.0.2</string><string>10.9.0.100</string></array>";
        assert_eq!(
            nat_guest_range(Some(plist)),
            (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 100))
        );
    }
}
