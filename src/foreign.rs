//! macOS VMs this driver did not start. Apple's limit of two macOS guests per Mac counts
//! every macOS VM on the host: other users', other TART_HOMEs', a developer's, another
//! tool's. The driver's own slots cannot know them, so a job whose slot was free can still
//! see `tart run` fail at the limit; Tart's error then names only the VMs of its own
//! TART_HOME, often none. Such a job waits for the host, as it waits for a slot.

use std::time::{Duration, Instant};

use crate::vm::VmState;

/// The start of Tart's error when Apple's limit is reached.
const LIMIT_MESSAGE: &str = "The number of VMs exceeds the system limit";

/// How long a job waits before it tries `tart run` again at the limit.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How often the job log is reminded that the job is still waiting.
const NOTICE_EVERY: Duration = Duration::from_secs(30);

/// Whether this VM's `tart run` ended at Apple's limit.
pub fn hit_the_limit(state: &VmState) -> bool {
    state
        .run_ending()
        .is_some_and(|ending| ending.contains(LIMIT_MESSAGE))
}

/// A job waiting for macOS VMs it did not start to leave room.
pub struct LimitWait {
    started: Instant,
    last_notice: Option<Instant>,
}

impl LimitWait {
    pub fn new() -> LimitWait {
        LimitWait {
            started: Instant::now(),
            last_notice: None,
        }
    }

    /// Tells the job log why it waits, once and then every half minute.
    pub fn notice(&mut self, state: &VmState) {
        if self.last_notice.is_some_and(|t| t.elapsed() < NOTICE_EVERY) {
            return;
        }
        let tart = state.run_ending().unwrap_or_default();
        eprintln!(
            "Waiting for the Mac's macOS VM limit: macOS VMs not started by this driver (another user's, another TART_HOME's, a developer's) fill Apple's two places although this runner's slots are free; retrying until the job's timeout (waited {}s; Tart: {tart}). `gitlab-runner-tart-driver doctor` lists the VMs it can see",
            self.started.elapsed().as_secs()
        );
        self.last_notice = Some(Instant::now());
    }

    /// The error once the job's time to wait is up.
    pub fn gave_up(&self, state: &VmState) -> anyhow::Error {
        anyhow::anyhow!(
            "macOS VMs not started by this driver kept Apple's two-VM limit full for {}s (Tart: {}): stop them, or run macOS jobs on another Mac; `gitlab-runner-tart-driver doctor` lists the VMs it can see",
            self.started.elapsed().as_secs(),
            state.run_ending().unwrap_or_default()
        )
    }
}
