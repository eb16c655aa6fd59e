//! The JSON objects of Orchard's REST API (spec/orchard.md §1.5, §1.7, §1.13), in the wire
//! names the controller uses: a mix of camelCase, snake_case and hyphenated keys.
//!
//! Every field is always emitted, as Go does for fields without `omitempty`; unset times are
//! Go's zero time `0001-01-01T00:00:00Z` (§1.3).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Go's zero `time.Time`, which `omitempty` does not omit.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The implicit resource every darwin+tart VM asks for, and each Tart worker offers twice.
pub const TART_VMS: &str = "org.cirruslabs.tart-vms";

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct HostDir {
    pub name: String,
    pub path: String,
    pub ro: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Vm {
    pub name: String,
    pub uid: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    pub version: u64,
    pub generation: u64,
    #[serde(rename = "observedGeneration")]
    pub observed_generation: u64,
    pub image: String,
    pub image_fqn: String,
    #[serde(rename = "imagePullPolicy")]
    pub image_pull_policy: String,
    pub cpu: u64,
    pub memory: u64,
    #[serde(rename = "diskSize")]
    pub disk_size: u64,
    pub os: String,
    pub arch: String,
    pub runtime: String,
    pub headless: bool,
    pub nested: bool,
    #[serde(rename = "net-bridged")]
    pub net_bridged: String,
    #[serde(rename = "netSoftnet")]
    pub net_softnet: bool,
    /// Deprecated alias of `netSoftnet`, still emitted.
    #[serde(rename = "net-softnet")]
    pub net_softnet_deprecated: bool,
    #[serde(rename = "netSoftnetAllow")]
    pub net_softnet_allow: Vec<String>,
    #[serde(rename = "netSoftnetBlock")]
    pub net_softnet_block: Vec<String>,
    pub suspendable: bool,
    pub username: String,
    pub password: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_script: Option<serde_json::Value>,
    pub restart_policy: String,
    pub restart_count: u64,
    pub restarted_at: String,
    pub resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "hostDirs")]
    pub host_dirs: Vec<HostDir>,
    #[serde(rename = "randomSerial")]
    pub random_serial: bool,
    #[serde(rename = "powerState")]
    pub power_state: String,
    #[serde(rename = "localName")]
    pub local_name: String,
    #[serde(rename = "tartName")]
    pub tart_name: String,
    pub status: String,
    pub status_message: String,
    pub worker: String,
    #[serde(rename = "assignedCPU")]
    pub assigned_cpu: u64,
    #[serde(rename = "assignedMemory")]
    pub assigned_memory: u64,
    pub conditions: Vec<Condition>,
    pub scheduled_at: String,
    pub started_at: String,
}

impl Vm {
    pub fn set_condition(&mut self, kind: &str, state: bool) {
        let state = if state { "true" } else { "false" }.to_string();
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => c.state = state,
            None => self.conditions.push(Condition {
                kind: kind.into(),
                state,
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Worker {
    pub name: String,
    pub machine_id: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    pub arch: String,
    pub runtime: String,
    pub resources: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "defaultCPU")]
    pub default_cpu: u64,
    #[serde(rename = "defaultMemory")]
    pub default_memory: u64,
    pub last_seen: String,
    pub scheduling_paused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub kind: String,
    pub timestamp: i64,
    pub payload: String,
}

/// `{"message": …}`: the body of every Orchard error that has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now as RFC 3339 with nanoseconds trimmed to what Go prints (`2026-05-11T10:00:00.1Z`).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_go_prints_them() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_778_493_600, 100_000_000),
            "2026-05-11T10:00:00.1Z"
        );
    }

    #[test]
    fn a_vm_serializes_with_the_mixed_wire_names() {
        let vm = Vm {
            status_message: "VM started".into(),
            ..Vm::default()
        };
        let v = serde_json::to_value(&vm).unwrap();
        for key in [
            "imagePullPolicy",
            "status_message",
            "net-bridged",
            "assignedCPU",
            "restart_policy",
            "observedGeneration",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
    }
}
