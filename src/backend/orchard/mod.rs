//! The Orchard backend: each job's VM runs on whichever Mac of an Orchard fleet has room.
//! [`fleet`] implements the seam's operations (create, reach, destroy, list and sweep) over
//! the controller's client in `crate::orchard`; [`spec`] is the VM a job asks the controller
//! for; [`images`] is which images a job may run there. May use: what `backend` may use;
//! nothing below it imports this.

pub mod fleet;
pub mod images;
pub mod spec;

pub use fleet::Fleet;
