//! The async runtime every command that talks to Tart, a guest or a controller runs on.
//! A leaf: it uses nothing of the crate, so any layer may build one.

/// A runtime for one command: one thread is plenty, and starts fastest.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
