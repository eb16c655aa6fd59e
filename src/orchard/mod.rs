//! Orchard, Tart's orchestrator: the controller's client, which the Orchard backend
//! (`backend::orchard`) uses to run each job's VM on whichever Mac of a fleet has room
//! (spec/orchard.md; design notes in docs/orchard.md).
//!
//! Here: the REST [`client`] with its TLS [`trust`] and the controller's [`url`], the wire
//! [`types`], the admin's Orchard options ([`settings`], which `crate::settings` composes),
//! waiting for a VM in the [`queue`], the port-forward WebSocket ([`portforward`]) and the
//! `ProxyCommand` ssh reaches a VM with ([`proxy`]), VM names by runner ([`name`],
//! [`identity`]) and the sweep of what this runner left behind ([`sweep`]). None of it runs,
//! nor is TLS set up, with the default `--backend tart`.
//!
//! May use: host (the state directory), guest (shell quoting) and the shared kinds; never
//! settings, the job's request, the backends, the stages or doctor.

pub mod capacity;
pub mod client;
pub mod identity;
pub mod name;
pub mod portforward;
pub mod proxy;
pub mod queue;
pub mod settings;
pub mod sweep;
pub mod trust;
pub mod types;
pub mod url;
