//! The stages gitlab-runner calls, the admin's `gc` and `warm`, and ssh's `orchard-proxy`,
//! one module each. Each is a thin sequence of steps from the modules that own the concerns;
//! what can go wrong is told in `Failure`. A stage takes the admin's options as settings
//! types (`Options` and plain values): the command line converts into them, and no stage
//! imports it. May use: every layer below (the backend seam, the warm pool's records, the
//! job's request, settings, Orchard's client, guest, host, the runtime and the shared
//! kinds); never doctor, and nothing but `main` imports them.

pub mod cleanup;
pub mod config;
pub mod gc;
pub mod orchard_proxy;
pub mod prepare;
pub mod run;
pub mod warm;
