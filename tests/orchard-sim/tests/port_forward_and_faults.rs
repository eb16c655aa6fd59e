//! The port-forward WebSocket and every fault knob, against synthetic workers (their ports
//! echo, as Orchard's synthetic workers' do).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tungstenite::Message;

const UA: Option<&str> = Some("orchard-sim-tests/1");

fn running(sim: &orchard_sim::Sim, name: &str) {
    assert_eq!(create(sim, json!({"name": name, "image": "i"})).status, 200);
    wait_status(sim, name, "running", Duration::from_secs(10));
}

#[test]
fn port_forward_carries_binary_bytes_both_ways() {
    let sim = sim();
    running(&sim, "pf");
    let mut ws = port_forward(&sim, "pf", "port=22&wait=5", ADMIN, UA).expect("101");
    ws.send(Message::Binary(b"hello \x00\xff".to_vec().into()))
        .unwrap();
    let (bytes, binary) = read_bytes(&mut ws, 8);
    assert_eq!(bytes, b"hello \x00\xff");
    assert!(binary);
    assert_eq!(sim.port_forwards_served(), 1);
}

#[test]
fn without_a_user_agent_port_forward_speaks_text_messages() {
    let sim = sim();
    running(&sim, "old");
    let mut ws = port_forward(&sim, "old", "port=22", ADMIN, None).expect("101");
    ws.send(Message::Text("hi".into())).unwrap();
    let (bytes, binary) = read_bytes(&mut ws, 2);
    assert_eq!(bytes, b"hi");
    assert!(
        !binary,
        "an old client without User-Agent gets text messages"
    );
}

#[test]
fn port_forward_answers_404_408_417_and_400_before_the_upgrade() {
    let sim = sim_with(|c| c.faults.pending_forever = true);
    assert_eq!(
        port_forward(&sim, "nope", "port=22&wait=1", ADMIN, UA).unwrap_err(),
        (404, String::new())
    );
    create(&sim, json!({"name": "p", "image": "i"}));
    let started = Instant::now();
    let (code, body) = port_forward(&sim, "p", "port=22&wait=1", ADMIN, UA).unwrap_err();
    assert_eq!(code, 408);
    assert!(body.contains("VM is not running on"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        port_forward(&sim, "p", "port=x", ADMIN, UA).unwrap_err().0,
        400
    );
    assert_eq!(
        port_forward(&sim, "p", "port=22&wait=99999", ADMIN, UA)
            .unwrap_err()
            .0,
        400
    );
    sim.faults(|f| {
        f.pending_forever = false;
        f.fail_vms_with = Some("failed to clone the VM: tart command failed: \"disk full\"".into());
    });
    let failed = wait_status(&sim, "p", "failed", Duration::from_secs(10));
    assert!(failed["status_message"]
        .as_str()
        .unwrap()
        .contains("disk full"));
    let (code, body) = port_forward(&sim, "p", "port=22&wait=1", ADMIN, UA).unwrap_err();
    assert_eq!(code, 417);
    assert!(
        body.contains("VM is in a terminal state 'failed'"),
        "{body}"
    );
}

#[test]
fn pending_forever_keeps_every_vm_pending() {
    let sim = sim_with(|c| c.faults.pending_forever = true);
    create(&sim, json!({"name": "q", "image": "i"}));
    std::thread::sleep(Duration::from_millis(500));
    let v = vm(&sim, "q");
    assert_eq!(
        (v["status"].as_str(), v["worker"].as_str()),
        (Some("pending"), Some(""))
    );
}

#[test]
fn injected_port_forward_errors_come_in_order_then_it_works() {
    let sim = sim();
    running(&sim, "e");
    sim.faults(|f| f.port_forward_errors = vec![503, 500, 408]);
    assert_eq!(
        port_forward(&sim, "e", "port=22", ADMIN, UA).unwrap_err(),
        (503, String::new())
    );
    assert_eq!(
        port_forward(&sim, "e", "port=22", ADMIN, UA).unwrap_err(),
        (500, String::new())
    );
    let (code, body) = port_forward(&sim, "e", "port=22", ADMIN, UA).unwrap_err();
    assert_eq!(code, 408);
    assert!(body.contains("\"message\""), "{body}");
    assert!(port_forward(&sim, "e", "port=22", ADMIN, UA).is_ok());
}

/// The close frame that ends `ws` (within 10 s), skipping data and pings.
fn close_frame(ws: &mut Ws) -> Option<tungstenite::protocol::CloseFrame> {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        match ws
            .read()
            .expect("a close frame, not the end of the connection")
        {
            Message::Close(frame) => return frame,
            _ => continue,
        }
    }
}

#[test]
fn a_message_of_the_wrong_type_is_answered_with_close_1003_and_coders_reason() {
    let sim = sim();
    running(&sim, "t");
    let mut ws = port_forward(&sim, "t", "port=22", ADMIN, UA).unwrap();
    ws.send(Message::Text("text, but binary was agreed".into()))
        .unwrap();
    let frame = close_frame(&mut ws).expect("a status");
    assert_eq!(u16::from(frame.code), 1003);
    assert_eq!(
        frame.reason.as_str(),
        "unexpected frame type read (expected MessageBinary): MessageText"
    );
}

#[test]
fn a_clients_close_is_answered_with_its_own_status() {
    let sim = sim();
    running(&sim, "n");
    let mut ws = port_forward(&sim, "n", "port=22", ADMIN, UA).unwrap();
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    let frame = close_frame(&mut ws).expect("a status");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(sim.client_close_codes(), [1000]);
}

#[test]
fn a_close_without_a_status_is_answered_without_one_and_recorded_as_1005() {
    let sim = sim();
    running(&sim, "m");
    let mut ws = port_forward(&sim, "m", "port=22", ADMIN, UA).unwrap();
    ws.close(None).unwrap();
    assert_eq!(close_frame(&mut ws), None);
    assert_eq!(sim.client_close_codes(), [1005]);
}

fn assert_cut(ws: &mut Ws) {
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => panic!("a cut WebSocket must end without a close frame"),
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

#[test]
fn cut_after_bytes_drops_the_websocket_mid_stream() {
    let sim = sim_with(|c| c.faults.cut_after_bytes = Some(4));
    running(&sim, "c");
    let mut ws = port_forward(&sim, "c", "port=22", ADMIN, UA).unwrap();
    ws.send(Message::Binary(b"abcdefgh".to_vec().into()))
        .unwrap();
    let (bytes, _) = read_bytes(&mut ws, 4);
    assert_eq!(bytes, b"abcd");
    assert_cut(&mut ws);
}

#[test]
fn cutting_port_forwards_ends_open_websockets_but_not_the_controller() {
    let sim = sim();
    running(&sim, "k");
    let mut ws = port_forward(&sim, "k", "port=22", ADMIN, UA).unwrap();
    ws.send(Message::Binary(b"x".to_vec().into())).unwrap();
    read_bytes(&mut ws, 1);
    sim.cut_port_forwards();
    assert_cut(&mut ws);
    assert!(port_forward(&sim, "k", "port=22", ADMIN, UA).is_ok());
}

#[test]
fn a_restart_drops_every_websocket_refuses_connections_for_a_while_and_keeps_the_vms() {
    let sim = sim();
    running(&sim, "r");
    let mut ws = port_forward(&sim, "r", "port=22", ADMIN, UA).unwrap();
    sim.restart(Duration::from_millis(800));
    assert_cut(&mut ws);
    let host = sim.url.trim_start_matches("http://").to_string();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "the port is closed while down"
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(vm(&sim, "r")["status"], "running");
    assert!(port_forward(&sim, "r", "port=22", ADMIN, UA).is_ok());
}

#[test]
fn slow_sshd_answers_500_when_wait_runs_out_and_connects_with_a_longer_wait() {
    let sim = sim_with(|c| c.faults.slow_sshd_ms = 2500);
    running(&sim, "s");
    assert_eq!(
        port_forward(&sim, "s", "port=22&wait=1", ADMIN, UA).unwrap_err(),
        (500, String::new())
    );
    assert!(port_forward(&sim, "s", "port=22&wait=5", ADMIN, UA).is_ok());
}

#[test]
fn a_vanished_worker_answers_503_and_its_vms_fail_after_the_offline_timeout() {
    let sim = sim_with(|c| c.worker_offline_timeout_ms = 1000);
    running(&sim, "v");
    sim.vanish_worker("worker-1");
    assert_eq!(
        port_forward(&sim, "v", "port=22&wait=1", ADMIN, UA).unwrap_err(),
        (503, String::new())
    );
    let failed = wait_status(&sim, "v", "failed", Duration::from_secs(10));
    assert_eq!(
        failed["status_message"],
        "VM is assigned to a worker that lost connection with the controller"
    );
}

#[test]
fn the_control_endpoints_steer_the_binary_too() {
    let sim = sim();
    running(&sim, "b");
    let r = request(
        &sim,
        "POST",
        "/_sim/faults",
        None,
        Some(r#"{"port_forward_errors":[503]}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        port_forward(&sim, "b", "port=22", ADMIN, UA).unwrap_err().0,
        503
    );
    let mut ws = port_forward(&sim, "b", "port=22", ADMIN, UA).unwrap();
    assert_eq!(request(&sim, "POST", "/_sim/cut", None, None).status, 200);
    assert_cut(&mut ws);
    assert_eq!(
        request(&sim, "POST", "/_sim/workers/worker-1/vanish", None, None).status,
        200
    );
    assert_eq!(
        port_forward(&sim, "b", "port=22&wait=1", ADMIN, UA)
            .unwrap_err()
            .0,
        503
    );
}

#[test]
fn the_ip_endpoint_waits_and_answers_like_port_forward() {
    let sim = sim();
    create(&sim, json!({"name": "i", "image": "i"}));
    let r = admin(&sim, "GET", "/v1/vms/i/ip?wait=10", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["ip"].is_string());
    assert_eq!(admin(&sim, "GET", "/v1/vms/nope/ip", None).status, 404);
}

fn hang_up_after_echo(sim: &orchard_sim::Sim, name: &str) -> Ws {
    running(sim, name);
    let mut ws = port_forward(sim, name, "port=22", ADMIN, UA).unwrap();
    ws.send(Message::Binary(b"hangup\n".to_vec().into()))
        .unwrap();
    let (bytes, _) = read_bytes(&mut ws, 7);
    assert_eq!(bytes, b"hangup\n");
    ws
}

#[test]
fn vm_end_frame_closes_with_1000_when_the_vm_side_hangs_up() {
    let sim = sim_with(|c| c.faults.vm_end = orchard_sim::VmEnd::Frame);
    let mut ws = hang_up_after_echo(&sim, "f");
    let frame = close_frame(&mut ws).expect("a status");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(sim.vm_side_drops(), 0);
}

#[test]
fn vm_end_drop_ends_the_connection_without_a_close_frame_when_the_vm_side_hangs_up() {
    let sim = sim_with(|c| c.faults.vm_end = orchard_sim::VmEnd::Drop);
    let mut ws = hang_up_after_echo(&sim, "d");
    assert_cut(&mut ws);
    assert_eq!(sim.vm_side_drops(), 1);
}

#[test]
fn by_default_some_vm_side_ends_drop_and_some_close() {
    let default = orchard_sim::VmEnd::default();
    let drops: Vec<bool> = (1..=16).map(|n| default.drops(n)).collect();
    assert!(drops.contains(&true) && drops.contains(&false), "{drops:?}");
}
