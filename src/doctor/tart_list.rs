//! `tart list`, read once per doctor run, and the fields of its entries that the Tart and
//! network checks read.

use std::path::Path;
use std::time::Duration;

use super::probe::run_bounded;

const LIST_LIMIT: Duration = Duration::from_secs(10);

/// `tart list --format json`: its entries, or why there are none.
pub(super) struct TartList {
    pub(super) entries: Result<Vec<serde_json::Value>, String>,
}

pub(super) fn tart_list(tart: &Path) -> TartList {
    let entries = match run_bounded(tart, &["list", "--format", "json"], LIST_LIMIT) {
        Ok(out) if out.ok() => serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
            .map_err(|e| format!("cannot parse `tart list --format json`: {e}")),
        Ok(out) => Err(format!("`tart list` failed: {}", out.message())),
        Err(e) => Err(e),
    };
    TartList { entries }
}

pub(super) fn field<'a>(entry: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    entry.get(key)
}

pub(super) fn entry_name(entry: &serde_json::Value) -> &str {
    field(entry, "Name").and_then(|v| v.as_str()).unwrap_or("")
}

pub(super) fn entry_is_oci(entry: &serde_json::Value) -> bool {
    field(entry, "Source")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.eq_ignore_ascii_case("oci"))
}

pub(super) fn entry_is_running(entry: &serde_json::Value) -> bool {
    field(entry, "State").and_then(|v| v.as_str()) == Some("running")
        || field(entry, "Running").and_then(|v| v.as_bool()) == Some(true)
}

/// On-disk size in GB: `Size` (an int in `list`), or `SizeOnDisk` before Tart 2.31.
pub(super) fn entry_size_gb(entry: &serde_json::Value) -> Option<f64> {
    let v = field(entry, "Size").or_else(|| field(entry, "SizeOnDisk"))?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}
