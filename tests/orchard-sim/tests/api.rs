//! The REST API as spec/orchard.md describes it: auth and roles, VM create/get/list/update/
//! delete with the controller's validations, status progression, scheduling, workers and
//! events. Synthetic workers: no root, no sshd.

mod support;

use std::time::Duration;

use orchard_sim::{Account, HostDirPolicy, WorkerSpec};
use serde_json::json;
use support::*;

#[test]
fn liveness_needs_no_account() {
    let sim = sim();
    assert_eq!(request(&sim, "GET", "/v1/", None, None).status, 200);
}

#[test]
fn no_or_wrong_credentials_get_401_with_an_empty_body() {
    let sim = sim();
    let none = request(&sim, "GET", "/v1/vms", None, None);
    assert_eq!((none.status, none.body.as_str()), (401, ""));
    let wrong = request(&sim, "GET", "/v1/vms", Some((ADMIN.0, "nope")), None);
    assert_eq!((wrong.status, wrong.body.as_str()), (401, ""));
    let info = request(&sim, "GET", "/v1/controller/info", None, None);
    assert_eq!(info.status, 401);
}

#[test]
fn a_missing_role_is_401_with_the_roles_named() {
    let sim = sim_with(|c| {
        c.accounts
            .push(Account::new("reader", "r", &["compute:read"]))
    });
    let r = request(
        &sim,
        "POST",
        "/v1/vms",
        Some(("reader", "r")),
        Some(r#"{"name":"a","image":"i"}"#),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["message"],
        "all of the following roles must be present: compute:write"
    );
    create(&sim, json!({"name": "a", "image": "i"}));
    let pf = port_forward(&sim, "a", "port=22&wait=1", ("reader", "r"), Some("t/1")).unwrap_err();
    assert_eq!(pf.0, 401);
    assert!(
        pf.1.contains("any of the following roles must be present: compute:write, compute:connect"),
        "{}",
        pf.1
    );
}

#[test]
fn controller_info_needs_only_a_valid_account() {
    let sim = sim_with(|c| c.accounts.push(Account::new("nobody", "n", &[])));
    let r = request(
        &sim,
        "GET",
        "/v1/controller/info",
        Some(("nobody", "n")),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["capabilities"].as_array().unwrap().len() >= 2);
}

#[test]
fn create_answers_200_with_the_controllers_defaults_then_the_vm_runs() {
    let sim = sim();
    let r = create(
        &sim,
        json!({"name": "gl-a-1-1", "image": "ghcr.io/x/y:1", "headless": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["imagePullPolicy"], "IfNotPresent");
    assert_eq!(v["restart_policy"], "Never");
    assert_eq!(v["username"], "admin");
    assert_eq!(v["resources"]["org.cirruslabs.tart-vms"], 1);
    assert_eq!(v["started_at"], "0001-01-01T00:00:00Z");
    assert_eq!(v["generation"], 0);
    let running = wait_status(&sim, "gl-a-1-1", "running", Duration::from_secs(10));
    assert_eq!(running["worker"], "worker-1");
    assert_eq!(running["status_message"], "VM started");
    assert_eq!(running["assignedCPU"], 4);
    assert!(running["localName"]
        .as_str()
        .unwrap()
        .starts_with("orchard-gl-a-1-1-"));
    assert_ne!(running["started_at"], "0001-01-01T00:00:00Z");
}

#[test]
fn create_refuses_what_the_controller_refuses_with_its_codes() {
    let sim = sim_with(|c| {
        c.host_dir_policies = vec![HostDirPolicy {
            path_prefix: "/Applications/".into(),
            ro: true,
        }]
    });
    let bad_json = admin(&sim, "POST", "/v1/vms", Some("{"));
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["message"], "invalid JSON was provided");
    for body in [
        json!({"name": "", "image": "i"}),
        json!({"name": "a b", "image": "i"}),
        json!({"name": "a", "image": ""}),
        json!({"name": "a", "image": "i", "imagePullPolicy": "Sometimes"}),
        json!({"name": "a", "image": "i", "restart_policy": "Always"}),
        json!({"name": "a", "image": "i", "runtime": "qemu"}),
    ] {
        let r = create(&sim, body.clone());
        assert_eq!(r.status, 412, "{body}: {}", r.body);
        assert!(!r.json()["message"].as_str().unwrap().is_empty());
    }
    let rw = create(
        &sim,
        json!({"name": "a", "image": "i", "hostDirs": [{"name": "x", "path": "/Applications/X", "ro": false}]}),
    );
    assert_eq!(rw.status, 400);
    assert!(rw.json()["message"]
        .as_str()
        .unwrap()
        .contains("disallowed by policy"));
    // Orchard refuses `..` anywhere in the path, even inside a name.
    let dots = create(
        &sim,
        json!({"name": "a", "image": "i", "hostDirs": [{"name": "x", "path": "/Applications/Xcode..beta.app", "ro": true}]}),
    );
    assert_eq!(dots.status, 400, "{}", dots.body);
    let ro = create(
        &sim,
        json!({"name": "a", "image": "i", "hostDirs": [{"name": "x", "path": "/Applications/X", "ro": true}]}),
    );
    assert_eq!(ro.status, 200, "{}", ro.body);
    let dup = create(&sim, json!({"name": "a", "image": "i"}));
    assert_eq!(dup.status, 409);
    assert_eq!(dup.json()["message"], "VM with this name already exists");
}

#[test]
fn get_list_and_delete_follow_the_controllers_shapes() {
    let sim = sim();
    assert_eq!(admin(&sim, "GET", "/v1/vms", None).json(), json!([]));
    create(&sim, json!({"name": "one", "image": "i"}));
    create(&sim, json!({"name": "two", "image": "i"}));
    let names: Vec<String> = admin(&sim, "GET", "/v1/vms", None)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["one", "two"]);
    wait_status(&sim, "one", "running", Duration::from_secs(10));
    let on_worker = admin(&sim, "GET", "/v1/vms?filter=worker=worker-1", None).json();
    assert!(!on_worker.as_array().unwrap().is_empty());
    let elsewhere = admin(&sim, "GET", "/v1/vms?filter=worker=other", None).json();
    assert_eq!(elsewhere, json!([]));
    let del = admin(&sim, "DELETE", "/v1/vms/one", None);
    assert_eq!((del.status, del.body.as_str()), (200, ""));
    let gone = admin(&sim, "GET", "/v1/vms/one", None);
    assert_eq!((gone.status, gone.body.as_str()), (404, ""));
    assert_eq!(admin(&sim, "DELETE", "/v1/vms/one", None).status, 404);
    // A deleted name can be used again at once.
    assert_eq!(
        create(&sim, json!({"name": "one", "image": "i"})).status,
        200
    );
}

#[test]
fn a_spec_update_bumps_generation_but_an_old_worker_user_agent_reports_state() {
    let sim = sim();
    create(&sim, json!({"name": "u", "image": "i"}));
    let mut v = vm(&sim, "u");
    v["cpu"] = json!(6);
    let updated = admin(&sim, "PUT", "/v1/vms/u", Some(&v.to_string()));
    assert_eq!(updated.json()["generation"], 1);
    let mut report = vm(&sim, "u");
    report["status"] = json!("failed");
    report["status_message"] = json!("reported");
    let r = request_with(
        &sim,
        "PUT",
        "/v1/vms/u",
        Some(ADMIN),
        Some(&report.to_string()),
        &[("User-Agent", "Orchard/0.20.0")],
    );
    assert_eq!(r.status, 200);
    let after = vm(&sim, "u");
    assert_eq!(
        (after["status"].as_str(), after["generation"].as_u64()),
        (Some("failed"), Some(1))
    );
    let refused = admin(&sim, "PUT", "/v1/vms/u", Some(&after.to_string()));
    assert_eq!(refused.status, 412);
}

#[test]
fn a_worker_takes_two_macos_vms_and_the_third_waits() {
    let sim = sim();
    for n in ["m1", "m2", "m3"] {
        create(&sim, json!({"name": n, "image": "i"}));
    }
    wait_status(&sim, "m1", "running", Duration::from_secs(10));
    wait_status(&sim, "m2", "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm(&sim, "m3")["status"], "pending");
    admin(&sim, "DELETE", "/v1/vms/m1", None);
    wait_status(&sim, "m3", "running", Duration::from_secs(10));
}

#[test]
fn labels_place_a_vm_only_on_a_worker_that_has_them_all() {
    let sim = sim_with(|c| {
        c.workers.push(WorkerSpec {
            name: "ios".into(),
            labels: [("pool".to_string(), "ios".to_string())].into(),
            ..WorkerSpec::default()
        })
    });
    create(
        &sim,
        json!({"name": "l", "image": "i", "labels": {"pool": "ios"}}),
    );
    assert_eq!(
        wait_status(&sim, "l", "running", Duration::from_secs(10))["worker"],
        "ios"
    );
    create(
        &sim,
        json!({"name": "n", "image": "i", "labels": {"pool": "android"}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm(&sim, "n")["status"], "pending");
}

#[test]
fn workers_list_their_resources_and_labels() {
    let sim = sim();
    let workers = admin(&sim, "GET", "/v1/workers", None).json();
    let w = &workers[0];
    assert_eq!(w["name"], "worker-1");
    assert_eq!(w["resources"]["org.cirruslabs.tart-vms"], 2);
    assert_eq!(w["arch"], "arm64");
    assert_eq!(admin(&sim, "GET", "/v1/workers/worker-1", None).status, 200);
    assert_eq!(admin(&sim, "GET", "/v1/workers/nope", None).status, 404);
}

#[test]
fn deleting_a_worker_fails_its_vms() {
    let sim = sim();
    create(&sim, json!({"name": "w", "image": "i"}));
    wait_status(&sim, "w", "running", Duration::from_secs(10));
    assert_eq!(
        admin(&sim, "DELETE", "/v1/workers/worker-1", None).status,
        200
    );
    assert_eq!(vm(&sim, "w")["status"], "failed");
}

#[test]
fn events_page_with_limit_order_and_cursor_and_go_with_the_vm() {
    let sim = sim();
    create(&sim, json!({"name": "e", "image": "i"}));
    let events: Vec<_> = (0..3)
        .map(|i| json!({"kind": "log_line", "timestamp": 1715421600 + i, "payload": format!("line {i}")}))
        .collect();
    let r = admin(
        &sim,
        "POST",
        "/v1/vms/e/events",
        Some(&json!(events).to_string()),
    );
    assert_eq!(r.status, 200);
    let page = admin(&sim, "GET", "/v1/vms/e/events?limit=2&order=desc", None);
    assert_eq!(page.json()[0]["payload"], "line 2");
    assert_eq!(page.json().as_array().unwrap().len(), 2);
    let cursor = page
        .header("x-next-cursor")
        .expect("next cursor")
        .to_string();
    let rest = admin(
        &sim,
        "GET",
        &format!("/v1/vms/e/events?order=desc&cursor={cursor}"),
        None,
    );
    assert_eq!(rest.json()[0]["payload"], "line 0");
    assert!(rest.header("x-next-cursor").is_none());
    assert_eq!(
        admin(&sim, "GET", "/v1/vms/e/events?limit=x", None).status,
        400
    );
    admin(&sim, "DELETE", "/v1/vms/e", None);
    create(&sim, json!({"name": "e", "image": "i"}));
    assert_eq!(
        admin(&sim, "GET", "/v1/vms/e/events", None).json(),
        json!([])
    );
}

#[test]
fn the_api_prefix_moves_everything() {
    let sim = sim_with(|c| c.api_prefix = "/orchard".into());
    assert!(sim.url.ends_with("/orchard"));
    assert_eq!(admin(&sim, "GET", "/orchard/v1/vms", None).status, 200);
    assert_eq!(admin(&sim, "GET", "/v1/vms", None).status, 404);
}
