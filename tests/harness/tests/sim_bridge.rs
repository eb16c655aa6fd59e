//! `harness::sim::SimHost` against the real simulator binary (`cargo build --workspace` first).

use std::time::{Duration, Instant};

use harness::sim::{processes_mentioning, Image, SimHost};

const LINUX: &str = "ghcr.io/cirruslabs/ubuntu:latest";
const MAC: &str = "ghcr.io/cirruslabs/macos-tahoe-base:latest";

#[test]
fn catalogue_and_env_are_laid_out_for_the_simulator() {
    let sim = SimHost::new()
        .with_image(MAC, Image::darwin().agent(true).pull_ms(50))
        .with_image(
            LINUX,
            Image::linux()
                .registry_auth("u", "p")
                .boot_delay_ms(100)
                .reject_logins(),
        );
    let text = std::fs::read_to_string(sim.tart_home().join("catalogue.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mac = &v["images"][MAC];
    assert_eq!(mac["os"], "darwin");
    assert_eq!(mac["user"], "admin");
    assert_eq!(mac["password"], "admin");
    assert_eq!(mac["agent"], true);
    assert_eq!(mac["pull_ms"], 50);
    assert_eq!(mac["registry_auth"], serde_json::Value::Null);
    assert_eq!(mac["faults"]["boot_delay_ms"], 300);
    assert_eq!(mac["faults"]["run_dies_message"], serde_json::Value::Null);
    let lin = &v["images"][LINUX];
    assert_eq!(
        lin["registry_auth"],
        serde_json::json!({"username": "u", "password": "p"})
    );
    assert_eq!(lin["faults"]["reject_logins"], true);
    assert_eq!(lin["faults"]["boot_delay_ms"], 100);
    for key in ["size_bytes", "cpu", "memory_mib", "disk_gb"] {
        assert!(mac[key].is_u64(), "{key}");
    }
    let env = sim.env();
    assert!(env[0]
        .1
        .starts_with(&format!("{}:", sim.bin_dir().display())));
    assert_eq!(
        std::fs::read_link(sim.tart_path()).unwrap(),
        harness::sim::simulator_path().unwrap()
    );
    // the simulator answers through the symlink
    assert_eq!(sim.list(), vec![]);
}

#[test]
fn drop_stops_and_deletes_every_vm() {
    let home;
    {
        let sim = SimHost::new().with_image(LINUX, Image::linux().pull_ms(10).boot_delay_ms(50));
        home = sim.tart_home().display().to_string();
        sim.tart_ok(["clone", LINUX, "vm-a"]);
        sim.tart_ok(["clone", LINUX, "vm-b"]);
        let mut child = sim
            .command(["run", "--no-graphics", "vm-a"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while sim.running_count() < 1 && t0.elapsed() < Duration::from_secs(20) {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("tart run exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(sim.running_count(), 1);
        let names: Vec<String> = sim.local_vms().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["vm-a", "vm-b"]);
        let leaks = sim.leaks(None, None);
        assert_eq!(leaks.vms.len(), 2);
        assert!(
            leaks.processes.iter().any(|(pid, _)| *pid == child.id()),
            "{leaks:?}"
        );
        drop(sim);
        // tart run ends once the VM is stopped
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            child.try_wait().unwrap().is_some(),
            "tart run still alive after drop"
        );
    }
    let left = processes_mentioning(
        std::slice::from_ref(&home),
        Some(&format!("TART_HOME={home}")),
    );
    assert!(left.is_empty(), "{left:?}");
}
