//! `orchard-sim`: runs the fake Orchard controller until killed.
//!
//! `orchard-sim CONFIG.json` reads a [`orchard_sim::Config`] (JSON), starts the controller
//! and prints one JSON line on stdout: `{"url": …, "fingerprint": …, "cert_pem": …}`.
//! Faults are changed at run time through `POST /_sim/faults` (a `Faults` object),
//! `POST /_sim/cut`, `POST /_sim/restart?down_ms=N` and `POST /_sim/workers/NAME/vanish`.

use std::io::Write;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: orchard-sim CONFIG.json");
        std::process::exit(64);
    };
    let config = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|text| {
            serde_json::from_str::<orchard_sim::Config>(&text)
                .map_err(|e| format!("{path} is not a valid configuration: {e}"))
        });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orchard-sim: {e}");
            std::process::exit(64);
        }
    };
    let sim = match orchard_sim::Sim::start(config) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("orchard-sim: {e:#}");
            std::process::exit(1);
        }
    };
    let line = serde_json::json!({
        "url": sim.url,
        "fingerprint": sim.fingerprint,
        "cert_pem": sim.cert_pem,
    });
    println!("{line}");
    let _ = std::io::stdout().flush();
    // Until SIGTERM/SIGINT; dropping `sim` then deletes every VM the workers made.
    wait_for_termination();
    drop(sim);
}

fn wait_for_termination() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
}
