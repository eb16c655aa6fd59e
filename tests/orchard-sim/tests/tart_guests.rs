//! Tart workers: VMs are clones in the Tart simulator, `running` before the guest's sshd
//! answers, port-forwards reach the guest's real OpenSSH, and deleting a VM deletes its
//! clone. Needs root and the simulator (as `cargo test -p tart-sim`'s guest tests do).

mod support;

use std::time::{Duration, Instant};

use harness::sim::{Image, SimHost};
use orchard_sim::{TartEnv, WorkerSpec};
use serde_json::json;
use support::*;
use tungstenite::Message;

const IMAGE: &str = "ghcr.io/cirruslabs/macos-sequoia-base:latest";

fn tart_worker(host: &SimHost) -> WorkerSpec {
    WorkerSpec {
        name: "mini-1".into(),
        tart: Some(TartEnv {
            tart: host.tart_path(),
            env: host.env(),
        }),
        ..WorkerSpec::default()
    }
}

#[test]
fn a_port_forward_to_22_reaches_the_guests_sshd_and_delete_removes_the_clone() {
    let host = SimHost::new().with_image(IMAGE, Image::darwin().boot_delay_ms(800));
    let sim = sim_with(|c| c.workers = vec![tart_worker(&host)]);
    assert_eq!(
        create(
            &sim,
            json!({"name": "g1", "image": IMAGE, "headless": true})
        )
        .status,
        200
    );
    let v = wait_status(&sim, "g1", "running", Duration::from_secs(60));
    let local = v["localName"].as_str().unwrap().to_string();
    assert!(host.local_vms().iter().any(|vm| vm.name == local));
    let mut ws = port_forward(&sim, "g1", "port=22&wait=60", ADMIN, Some("t/1")).expect("101");
    let (banner, _) = read_bytes(&mut ws, 8);
    assert!(
        banner.starts_with(b"SSH-2.0-"),
        "{:?}",
        String::from_utf8_lossy(&banner)
    );
    ws.send(Message::Close(None)).ok();
    assert_eq!(admin(&sim, "DELETE", "/v1/vms/g1", None).status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.local_vms().iter().any(|vm| vm.name == local) {
        assert!(Instant::now() < deadline, "the clone was never deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn when_the_guests_sshd_hangs_up_the_controller_sends_a_normal_close() {
    let host = SimHost::new().with_image(IMAGE, Image::darwin());
    // The close frame mode; by default some of these ends drop the connection instead.
    let sim = sim_with(|c| {
        c.workers = vec![tart_worker(&host)];
        c.faults.vm_end = orchard_sim::VmEnd::Frame;
    });
    create(
        &sim,
        json!({"name": "g3", "image": IMAGE, "headless": true}),
    );
    wait_status(&sim, "g3", "running", Duration::from_secs(60));
    let mut ws = port_forward(&sim, "g3", "port=22&wait=60", ADMIN, Some("t/1")).expect("101");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Not an SSH identification string: sshd says so and closes the connection.
    ws.send(Message::Binary(b"not ssh\r\n".to_vec().into()))
        .unwrap();
    let frame = loop {
        match ws
            .read()
            .expect("a close frame, not the end of the connection")
        {
            Message::Close(frame) => break frame,
            _ => continue,
        }
    };
    let frame = frame.expect("a status, as coder/websocket's NetConn.Close sends");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(frame.reason.as_str(), "");
    assert_eq!(admin(&sim, "DELETE", "/v1/vms/g3", None).status, 200);
}

#[test]
fn a_clone_that_fails_fails_the_vm_with_tarts_message() {
    let host = SimHost::new().with_image(IMAGE, Image::darwin().clone_fails_disk());
    let sim = sim_with(|c| c.workers = vec![tart_worker(&host)]);
    create(&sim, json!({"name": "g2", "image": IMAGE}));
    let v = wait_status(&sim, "g2", "failed", Duration::from_secs(60));
    let message = v["status_message"].as_str().unwrap();
    assert!(
        message.starts_with("failed to clone the VM: tart command failed:"),
        "{message}"
    );
    assert!(message.contains("No space left on device"), "{message}");
}
