//! The warm pool (`--warm-pool N`): VMs cloned and booted ahead of jobs, so that a job
//! whose VM would be started exactly like one of them skips the boot.
//!
//! Owned here: what a VM is started with (`spec`), the pool's records
//! in the state directory (`record`, `pool`), the atomic claim (`claim`), where warm VMs fit
//! on the host (`capacity`) and the replenisher's bookkeeping (`replenish`). The stages on
//! top use it: prepare claims (`stages::claimed`), prepare and cleanup start the
//! replenisher, which is the `warm` subcommand (`stages::warm`). A warm VM belongs to the
//! local Tart backend: an ordinary VM record, swept by the same rules as a job's.
//!
//! May use: settings, the job's request, host, guest, and local Tart's backend parts (`backend::tart`).

pub mod capacity;
pub mod claim;
pub mod pool;
pub mod record;
pub mod replenish;
pub mod spec;
