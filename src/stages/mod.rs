//! The stages gitlab-runner calls, and the admin's `gc` and `warm`, one module each. Each is
//! a thin sequence of steps from the modules that own the concerns; what can go wrong is
//! told in `Failure`. A stage takes the admin's options as settings types (`Options` and
//! plain values): the command line converts into them, and no stage imports it. May use:
//! every layer below (the backend seam, the warm pool, the job's request, guest, host,
//! settings, model, the runtime); nothing but `main` imports them.

pub mod cleanup;
pub mod config;
pub mod gc;
pub mod orchard_proxy;
pub mod prepare;
pub mod run;
pub mod warm;
