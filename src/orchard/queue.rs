//! Waiting for a job's VM on the controller, from `pending` to `running`, and telling the
//! job log what a person wants to see meanwhile: the place in the queue, the worker (Mac)
//! it landed on, and Orchard's own status messages ("pulling VM image...", "cloning VM...").
//!
//! Orchard has no queue timeout of its own (spec/orchard.md §2.2, §2.3): a VM that fits no
//! worker stays `pending` forever, so the wait is bounded here. `pending` covers the image
//! pull and the clone on the worker as well. `failed` is final and carries Orchard's reason;
//! a VM that disappears was deleted by someone else. `running` only means the worker is about
//! to start `tart run`, not that SSH answers: that is the boot wait's business.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::client::{ApiError, Client};
use super::types::{Vm, VmStatus};

/// How often the VM is looked at (Orchard's scheduler runs every 5 s and right after a
/// create; its worker reports each step).
const POLL: Duration = Duration::from_secs(1);
/// How often the whole list is read for the queue position, while unscheduled.
const POSITION_EVERY: Duration = Duration::from_secs(5);
/// How long the wait rides out a controller that does not answer.
const UNREACHABLE_BOUND: Duration = Duration::from_secs(60);

/// Why the VM did not reach `running`.
#[derive(Debug)]
pub enum NotRunning {
    /// Orchard marked it `failed`; its message says why.
    Failed { worker: String, message: String },
    /// It vanished: deleted by someone else (any `compute:write` account can).
    Gone,
    /// The queue timeout passed; where it was then.
    TimedOut { limit: Duration, last: String },
    /// The controller did not answer, after the client's retries.
    Api(ApiError),
}

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRunning::Failed { worker, message } if worker.is_empty() => {
                write!(f, "Orchard failed the VM: {message}")
            }
            NotRunning::Failed { worker, message } => {
                write!(f, "Orchard failed the VM on worker {worker}: {message}")
            }
            NotRunning::Gone => write!(
                f,
                "the VM was deleted on the controller while the job waited for it (by another client or an admin)"
            ),
            NotRunning::TimedOut { limit, last } => write!(
                f,
                "the VM was not running after the queue timeout ({}s; it was {last}): the fleet may be full, no worker may have the labels and resources asked for, or the image pull is slow. Raise --orchard-queue-timeout, add workers, or pre-pull the image on them",
                limit.as_secs()
            ),
            NotRunning::Api(e) => write!(f, "{e}"),
        }
    }
}

/// Polls the VM until it runs, printing progress to the job log; bounded by `limit`.
pub async fn until_running(client: &Client, name: &str, limit: Duration) -> Result<Vm, NotRunning> {
    let deadline = Instant::now() + limit;
    let mut progress = Progress::default();
    let mut position_read: Option<Instant> = None;
    let mut position = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        // One call may retry for two minutes: it gets only what is left of the wait.
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        let Ok(answer) = tokio::time::timeout(left, client.get_vm(name)).await else {
            return Err(NotRunning::TimedOut {
                limit,
                last: progress.describe(),
            });
        };
        let vm = match answer {
            Ok(vm) => {
                unreachable_since = None;
                vm
            }
            Err(ApiError::NotFound) => return Err(NotRunning::Gone),
            // A controller restart takes longer than the client's own retries: the VM
            // waits in its store meanwhile, so keep looking, for a while.
            Err(e @ (ApiError::Network(_) | ApiError::Server { .. })) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_BOUND || Instant::now() + POLL > deadline {
                    return Err(NotRunning::Api(e));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(NotRunning::Api(e)),
        };
        match vm.status {
            VmStatus::Running => {
                for line in progress.lines(&vm, None) {
                    eprintln!("{line}");
                }
                return Ok(vm);
            }
            VmStatus::Failed => {
                return Err(NotRunning::Failed {
                    worker: vm.worker.clone(),
                    message: nonempty(&vm.status_message, "no reason given"),
                })
            }
            _ => {}
        }
        if vm.worker.is_empty() {
            if position_read.is_none_or(|t| t.elapsed() >= POSITION_EVERY) {
                position_read = Some(Instant::now());
                // The position is a courtesy: a failed listing must not fail the job.
                let left = deadline.saturating_duration_since(Instant::now());
                position = tokio::time::timeout(left, client.list_vms())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|all| queue_position(&all, &vm));
            }
        } else {
            position = None;
        }
        for line in progress.lines(&vm, position) {
            eprintln!("{line}");
        }
        if Instant::now() + POLL > deadline {
            return Err(NotRunning::TimedOut {
                limit,
                last: progress.describe(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn nonempty(text: &str, otherwise: &str) -> String {
    if text.trim().is_empty() {
        otherwise.to_string()
    } else {
        text.trim().to_string()
    }
}

/// Where an unscheduled VM stands: 1 + the unscheduled pending VMs created before it.
/// Orchard takes them in `createdAt` order, though a later, smaller VM may overtake a big
/// one that fits nowhere (§2.2): a hint, not a promise.
pub fn queue_position(all: &[Vm], ours: &Vm) -> usize {
    1 + all
        .iter()
        .filter(|v| v.name != ours.name && v.status == VmStatus::Pending && v.worker.is_empty())
        .filter(|v| match (v.created_at, ours.created_at) {
            (Some(theirs), Some(mine)) => theirs < mine || (theirs == mine && v.name < ours.name),
            _ => false,
        })
        .count()
}

/// What the job log has been told so far, so each change is told once.
#[derive(Debug, Default)]
pub struct Progress {
    position: Option<usize>,
    worker: String,
    message: String,
}

impl Progress {
    /// The job-log lines for what changed since the last look.
    pub fn lines(&mut self, vm: &Vm, position: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        if vm.worker.is_empty() {
            if let Some(p) = position.filter(|&p| Some(p) != self.position) {
                out.push(if p == 1 {
                    "Orchard: waiting for a free worker (next in the queue)".to_string()
                } else {
                    format!(
                        "Orchard: waiting for a free worker ({} VMs ahead in the queue)",
                        p - 1
                    )
                });
                self.position = Some(p);
            }
        } else if vm.worker != self.worker {
            out.push(format!("Orchard: placed on worker {}", vm.worker));
            self.worker = vm.worker.clone();
        }
        let message = vm.status_message.trim();
        if !message.is_empty() && message != self.message {
            out.push(format!("Orchard: {message}"));
            self.message = message.to_string();
        }
        out
    }

    /// The last state told, for a timeout's message.
    fn describe(&self) -> String {
        match (&self.worker, self.position) {
            (w, _) if !w.is_empty() => format!(
                "on worker {w}{}",
                if self.message.is_empty() {
                    String::new()
                } else {
                    format!(", \"{}\"", self.message)
                }
            ),
            (_, Some(p)) => format!("still waiting for a worker, {} ahead in the queue", p - 1),
            _ => "still waiting for a worker".to_string(),
        }
    }
}

/// A refusal of the create request, as the job's failure: 400/409/412 carry Orchard's
/// message (a bad image, a host dir the cluster's policy refuses, ...).
pub fn create_refused(e: &ApiError, image: &str) -> anyhow::Error {
    match e {
        ApiError::Rejected { status, message } => anyhow!(
            "the Orchard controller refused to create the job's VM from `{image}` ({status}): {message}"
        ),
        other => anyhow!("cannot create the job's VM on the Orchard controller: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::{decode, Timestamp};
    use super::*;

    fn vm(name: &str, created: i64, status: VmStatus, worker: &str) -> Vm {
        Vm {
            name: name.into(),
            created_at: Some(Timestamp(created)),
            status,
            worker: worker.into(),
            ..Vm::default()
        }
    }

    #[test]
    fn the_queue_position_counts_unscheduled_vms_created_earlier() {
        let ours = vm("ours", 100, VmStatus::Pending, "");
        let all = [
            vm("older-waiting", 50, VmStatus::Pending, ""),
            vm("older-placed", 60, VmStatus::Pending, "mini-1"),
            vm("older-running", 70, VmStatus::Running, "mini-2"),
            vm("older-failed", 80, VmStatus::Failed, ""),
            vm("newer-waiting", 200, VmStatus::Pending, ""),
            ours.clone(),
        ];
        assert_eq!(queue_position(&all, &ours), 2);
    }

    #[test]
    fn progress_tells_each_change_once_queue_then_worker_then_orchards_messages() {
        let mut p = Progress::default();
        let waiting = vm("v", 1, VmStatus::Pending, "");
        assert_eq!(
            p.lines(&waiting, Some(3)),
            ["Orchard: waiting for a free worker (2 VMs ahead in the queue)"]
        );
        assert!(p.lines(&waiting, Some(3)).is_empty(), "nothing new");
        let mut placed: Vm = decode(
            br#"{"name":"v","status":"pending","worker":"mini-07","status_message":"cloning VM..."}"#,
        )
        .unwrap();
        assert_eq!(
            p.lines(&placed, None),
            [
                "Orchard: placed on worker mini-07",
                "Orchard: cloning VM..."
            ]
        );
        placed.status_message = "VM started".into();
        assert_eq!(p.lines(&placed, None), ["Orchard: VM started"]);
    }

    #[test]
    fn a_failure_names_the_worker_and_keeps_orchards_reason() {
        let e = NotRunning::Failed {
            worker: "mini-3".into(),
            message: "failed to clone the VM: tart command failed: \"no space\"".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("mini-3") && text.contains("no space"),
            "{text}"
        );
    }

    #[test]
    fn a_queue_timeout_says_where_the_vm_was_and_what_to_do() {
        let mut p = Progress::default();
        p.lines(&vm("v", 1, VmStatus::Pending, ""), Some(4));
        let text = NotRunning::TimedOut {
            limit: Duration::from_secs(60),
            last: p.describe(),
        }
        .to_string();
        assert!(text.contains("60s") && text.contains("3 ahead"), "{text}");
        assert!(text.contains("--orchard-queue-timeout"), "{text}");
    }
}
