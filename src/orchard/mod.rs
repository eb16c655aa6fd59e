//! Orchard, Tart's orchestrator: the client side of a backend that runs jobs on a fleet of
//! Macs through an Orchard controller (spec/orchard.md).
//!
//! What works today without the stages' backend seam: the REST client ([`client`]) with its
//! TLS trust ([`trust`]), the port-forward bridge ([`portforward`]) behind the hidden
//! `orchard-proxy` subcommand ([`proxy`], ssh's `ProxyCommand`), the admin settings
//! ([`settings`]) and `doctor --backend orchard`. [`name`] and the create-side types wait for
//! the backend's prepare stage (docs/orchard.md). Nothing here runs, nor is TLS set up,
//! unless an Orchard command is given: the stages' startup stays as cheap as before.

pub mod client;
pub mod name;
pub mod portforward;
pub mod proxy;
pub mod queue;
pub mod settings;
pub mod spec;
pub mod sweep;
pub mod trust;
pub mod types;
