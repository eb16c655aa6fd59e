//! Orchard's JSON objects, as this driver reads and writes them.
//!
//! Parsing is lenient on purpose (spec/orchard.md §1.3, §1.5): the wire names are a mix of
//! camelCase, snake_case and hyphenated keys; Go sends `null` for empty lists and maps and
//! its zero time `0001-01-01T00:00:00Z` for unset times; newer controllers add fields. So
//! answers go through [`decode`], which drops `null` members before the typed structs see
//! them; every field has a default, zero times read as `None`, unknown fields and unknown
//! status values are kept rather than refused. What we send uses the controller's exact
//! names.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The implicit resource every darwin+tart VM asks for; a Mac offers two.
pub const TART_VMS: &str = "org.cirruslabs.tart-vms";

/// A VM's lifecycle status. Orchard has only these three; anything else is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VmStatus {
    #[default]
    Pending,
    Running,
    Failed,
    Other(String),
}

impl<'de> Deserialize<'de> for VmStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        Ok(match s.as_str() {
            "" | "pending" => VmStatus::Pending,
            "running" => VmStatus::Running,
            "failed" => VmStatus::Failed,
            _ => VmStatus::Other(s),
        })
    }
}

/// A point in time as Unix seconds; Go's zero time and empty strings read as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if text.is_empty() || text.starts_with("0001-01-01") {
        return Ok(None);
    }
    parse_rfc3339(&text)
        .map(|t| Some(Timestamp(t)))
        .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
}

/// Reads one of the controller's answers. Go marshals nil slices and maps as `null`: such
/// members are dropped first, so each field falls back to its default.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    fn drop_nulls(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|_, m| !m.is_null());
                map.values_mut().for_each(drop_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    drop_nulls(&mut value);
    T::deserialize(value)
}

/// A VM as the controller reports it. Only what the driver looks at.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Vm {
    pub name: String,
    pub uid: String,
    #[serde(rename = "createdAt", deserialize_with = "timestamp")]
    pub created_at: Option<Timestamp>,
    pub image: String,
    /// `darwin` or `linux`.
    pub os: String,
    pub status: VmStatus,
    pub status_message: String,
    /// The worker (Mac) it was placed on; empty while unscheduled.
    pub worker: String,
    pub restart_count: u64,
    #[serde(deserialize_with = "timestamp")]
    pub scheduled_at: Option<Timestamp>,
    #[serde(deserialize_with = "timestamp")]
    pub started_at: Option<Timestamp>,
    pub resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
}

/// A worker (one Mac running `orchard worker`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Worker {
    pub name: String,
    /// `arm64` or `amd64`; a VM goes only to a worker of its arch and runtime.
    pub arch: String,
    /// `tart` (a Mac) or `vetu` (Linux).
    pub runtime: String,
    #[serde(deserialize_with = "timestamp")]
    pub last_seen: Option<Timestamp>,
    pub scheduling_paused: bool,
    pub resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/controller/info`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ControllerInfo {
    pub version: String,
    pub commit: String,
    pub capabilities: Vec<String>,
}

/// What `POST /v1/vms` gets from this driver (§1.5): headless always, no restarts. No
/// guest credentials: Orchard would show them to every `compute:read` account, and it
/// needs them only for its own startup scripts and exec, which the driver does not use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmSpec {
    pub name: String,
    pub image: String,
    #[serde(rename = "imagePullPolicy")]
    pub image_pull_policy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    pub headless: bool,
    #[serde(rename = "netSoftnet")]
    pub net_softnet: bool,
    /// The same, under the only name controllers before 0.43 know (they ignore
    /// `netSoftnet`, and would run the VM without Softnet); newer ones read either.
    #[serde(rename = "net-softnet")]
    pub net_softnet_deprecated: bool,
    #[serde(rename = "netSoftnetAllow", skip_serializing_if = "Vec::is_empty")]
    pub net_softnet_allow: Vec<String>,
    pub restart_policy: &'static str,
    pub resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "hostDirs", skip_serializing_if = "Vec::is_empty")]
    pub host_dirs: Vec<HostDir>,
}

/// A worker directory shared into the VM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostDir {
    pub name: String,
    pub path: String,
    pub ro: bool,
}

/// `{"message": …}`, the body of Orchard's errors that have one.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// RFC 3339 (`2026-05-11T10:00:00.1Z`, `…+02:00`) to Unix seconds; fractions dropped.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time_end = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(time_end);
    let clock = clock.split('.').next()?;
    let mut c = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (c.next()??, c.next()??, c.next()??);
    let offset = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running VM as a controller sends it: mixed naming, Go's zero time, `null` lists,
    /// and fields this driver has never heard of.
    const RUNNING: &str = r#"{
        "name": "gl-3f9a2c-88412345-1", "uid": "5b1c-1", "createdAt": "2026-05-11T10:00:00.1Z",
        "image": "ghcr.io/cirruslabs/macos-tahoe-xcode:26.1", "image_fqn": "ghcr.io/x@sha256:00",
        "imagePullPolicy": "IfNotPresent", "cpu": 4, "memory": 8192, "headless": true,
        "net-bridged": "", "netSoftnet": true, "net-softnet": true,
        "restarted_at": "0001-01-01T00:00:00Z", "restart_count": 0,
        "resources": {"org.cirruslabs.tart-vms": 1}, "labels": null, "hostDirs": null,
        "status": "running", "status_message": "VM started", "worker": "mini-07",
        "assignedCPU": 4, "observedGeneration": 0, "conditions": null,
        "scheduled_at": "2026-05-11T10:00:00.4Z", "started_at": "2026-05-11T12:00:21+02:00",
        "observedEndpoints": [{"port": 8080}], "audio": false
    }"#;

    #[test]
    fn a_running_vm_reads_despite_mixed_names_nulls_and_unknown_fields() {
        let vm: Vm = decode(RUNNING.as_bytes()).unwrap();
        assert_eq!(vm.status, VmStatus::Running);
        assert_eq!(vm.status_message, "VM started");
        assert_eq!(vm.worker, "mini-07");
        assert_eq!(vm.resources.get(TART_VMS), Some(&1));
        assert!(vm.labels.is_empty());
        assert_eq!(vm.created_at, Some(Timestamp(1_778_493_600)));
        assert_eq!(vm.started_at, Some(Timestamp(1_778_493_621)));
    }

    #[test]
    fn zero_times_and_missing_fields_read_as_absent() {
        let vm: Vm = decode(
            br#"{"name": "a", "status": "pending", "scheduled_at": "0001-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(vm.scheduled_at, None);
        assert_eq!(vm.created_at, None);
        assert_eq!(vm.status, VmStatus::Pending);
    }

    #[test]
    fn a_failed_vm_keeps_orchards_message_and_unknown_statuses_are_kept() {
        let vm: Vm = decode(
            br#"{"name": "a", "status": "failed", "status_message": "VM failed: VM exited unexpectedly"}"#,
        )
        .unwrap();
        assert_eq!(vm.status, VmStatus::Failed);
        assert_eq!(vm.status_message, "VM failed: VM exited unexpectedly");
        let odd: Vm = decode(br#"{"status": "suspended"}"#).unwrap();
        assert_eq!(odd.status, VmStatus::Other("suspended".into()));
    }

    #[test]
    fn a_worker_and_its_capacity_read_from_the_wire() {
        let w: Worker = decode(
            br#"{"name": "mini-07", "machine_id": "x", "last_seen": "2026-05-11T10:00:00Z",
                "scheduling_paused": false, "labels": null,
                "resources": {"org.cirruslabs.tart-vms": 2, "org.cirruslabs.memory-mib": 24576},
                "defaultCPU": 4}"#,
        )
        .unwrap();
        assert_eq!(w.resources[TART_VMS], 2);
        assert_eq!(w.last_seen, Some(Timestamp(1_778_493_600)));
    }

    #[test]
    fn controller_info_reads_from_the_wire() {
        let i: ControllerInfo = decode(
            br#"{"version":"0.55.0","commit":"b30bb5b","capabilities":["rpc-v1","rpc-v2"]}"#,
        )
        .unwrap();
        assert_eq!(i.version, "0.55.0");
    }

    #[test]
    fn the_create_request_uses_the_controllers_names_and_carries_no_guest_credentials() {
        let spec = VmSpec {
            name: "gl-a-1-1".into(),
            image: "img".into(),
            image_pull_policy: "IfNotPresent",
            cpu: Some(4),
            memory: None,
            headless: true,
            net_softnet: true,
            net_softnet_deprecated: true,
            net_softnet_allow: Vec::new(),
            restart_policy: "Never",
            resources: [(TART_VMS.to_string(), 1)].into(),
            labels: BTreeMap::new(),
            host_dirs: vec![HostDir {
                name: "xcode".into(),
                path: "/Applications/Xcode.app".into(),
                ro: true,
            }],
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["imagePullPolicy"], "IfNotPresent");
        assert_eq!(v["restart_policy"], "Never");
        assert_eq!(v["headless"], true);
        assert_eq!(v["hostDirs"][0]["ro"], true);
        assert_eq!(
            (&v["netSoftnet"], &v["net-softnet"]),
            (&true.into(), &true.into())
        );
        assert!(v.get("memory").is_none());
        assert!(v.get("password").is_none() && v.get("username").is_none());
    }

    #[test]
    fn rfc3339_offsets_and_fractions_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.999+01:00"), Some(0));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
