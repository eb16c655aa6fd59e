//! The stages gitlab-runner calls, one module each. Each is a thin sequence of steps from
//! the modules that own the concerns; what can go wrong is told in `Failure`. May use:
//! every layer below (the backend seam, the job's request, guest, host, settings, model);
//! nothing but `main` imports them (Orchard's proxy and the warm pool share `runtime()`).

pub mod cleanup;
pub mod config;
pub mod gc;
pub mod prepare;
pub mod run;
pub mod warm;

pub use crate::logging::phase_done;

/// A runtime for the stages that talk to Tart or the guest: one thread is plenty, and
/// starts fastest.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
