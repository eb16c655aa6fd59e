//! Cleanup stage: stop and delete the job's VM, close its connection, free its slot, remove
//! its state and host builds directory, then sweep orphans. Safe with nothing to clean, safe
//! twice, safe while a run stage is still alive.

use crate::backend::Backend;
use crate::failure::StageResult;
use crate::host::state_dir::StateDir;
use crate::host::vm::VmState;
use crate::job::JobContext;
use crate::settings::{Options, Settings};

pub fn cleanup(options: &Options) -> StageResult {
    let settings = Settings::load(options)?;
    let job = JobContext::from_env(&settings)?;
    crate::logging::init_for_job(&settings.job_overrides, job.vm_name().as_str());
    let backend = Backend::for_settings(&settings)?;
    let vm = job.vm_name();
    let root = StateDir::open(&settings.state_dir)?;
    let state = backend.job_vm(&root, &vm);
    crate::rt::runtime().block_on(async {
        let started = std::time::Instant::now();
        let summary = state.timing_summary();
        backend.destroy(&state, None).await?;
        if state.name != vm {
            // The job's own record, which named the warm VM it ran in.
            VmState::new(&root, &vm).forget_job_record().await?;
        }
        eprintln!("Removed VM {vm} ({:.1}s)", started.elapsed().as_secs_f64());
        if let Some(summary) = summary {
            eprintln!("{summary}, cleanup {:.1}s", started.elapsed().as_secs_f64());
        }
        let swept = match backend.list().await {
            Ok(listing) => backend.sweep(&listing, &root, Some(&vm), false).await,
            Err(e) => Err(e),
        };
        match swept {
            Ok(swept) if !swept.removed.is_empty() => eprintln!(
                "Removed {} orphaned VM(s) of earlier jobs",
                swept.removed.len()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("WARNING: orphan sweep failed: {e:#}"),
        }
        backend.refill(&root);
        Ok(())
    })
}
