//! The warm pool (`--warm-pool N`): VMs cloned and booted ahead of jobs, so that a job
//! whose VM would be started exactly like one of them skips the boot.
//!
//! Owned here: what a VM is started with (`spec`), the pool's records in the state
//! directory (`record`, `pool`), the atomic claim (`claim`) and the replenisher's
//! bookkeeping (`replenish`): files and rules, no Tart command. Local Tart's backend does the
//! rest with them (`backend::tart`: booting the pool, stopping a warm VM, where warm VMs fit
//! on the host), and the stages start the replenisher, which is the `warm` subcommand
//! (`stages::warm`). A warm VM is an ordinary VM record, swept by the same rules as a job's.
//! Its options are the admin's (`settings::warm`).
//!
//! May use: settings, the job's request, host, guest and the shared kinds; never the
//! backends, the stages or doctor.

pub mod claim;
pub mod pool;
pub mod record;
pub mod replenish;
pub mod spec;
