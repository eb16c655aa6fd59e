//! Orchard, Tart's orchestrator: the backend that runs each job's VM on whichever Mac of an
//! Orchard fleet has room (spec/orchard.md; design notes in docs/orchard.md).
//!
//! [`fleet`] is the backend the stages reach through `crate::backend`: it creates the VM from
//! a [`spec`], waits for it in the [`queue`], reaches it by ssh through the hidden
//! `orchard-proxy` subcommand ([`proxy`], over the controller's [`portforward`]), and deletes
//! it, sweeping what this runner left behind ([`sweep`], by [`name`] and [`identity`]). Underneath: the REST
//! [`client`] with its TLS [`trust`], the wire [`types`], and the admin's [`settings`]. None of
//! it runs, nor is TLS set up, with the default `--backend tart`.
//!
//! May use: settings, the job's request, guest transports, the host's state, and the seam's value types (`backend`).

pub mod client;
pub mod fleet;
pub mod identity;
pub mod name;
pub mod portforward;
pub mod proxy;
pub mod queue;
pub mod settings;
pub mod spec;
pub mod sweep;
pub mod trust;
pub mod types;
pub mod url;
