//! Admin options and job variables, end to end: what a runner admin configures and what a
//! pipeline asks for, as a user of the original driver would expect them to work.

mod common;

use common::{Bed, LINUX, MACOS};
use harness::sim::Image;
use harness::{run_job, Job, Verdict};

fn is_build_failure(v: &Verdict) -> bool {
    matches!(v, Verdict::BuildFailure { .. })
}

#[test]
fn host_builds_dir_is_shared_per_job_and_removed_at_cleanup() {
    let bed = Bed::new();
    let builds = bed.sim.root().join("host-builds");
    std::fs::create_dir_all(&builds).unwrap();
    let bed = bed.option(["--builds-dir", builds.to_str().unwrap()]);
    let runner = bed.runner().cleanup_exec(None);
    let out = run_job(
        &runner,
        &Job::new()
            .image(MACOS)
            .script(["echo made-in-vm > \"$CI_PROJECT_DIR/artifact.txt\""]),
    );
    out.assert_success();
    let found: Vec<_> = walk(&builds)
        .into_iter()
        .filter(|p| p.ends_with("artifact.txt"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(std::fs::read_to_string(&found[0]).unwrap(), "made-in-vm\n");
    // Cleanup removes the job's builds directory.
    let job_dir = builds.read_dir().unwrap().next().unwrap().unwrap().path();
    let vm = job_dir.file_name().unwrap().to_str().unwrap().to_string();
    let job_id = vm.rsplit('-').next().unwrap();
    let payload = bed.sim.root().join("cleanup-response.json");
    std::fs::write(&payload, format!("{{\"id\": {job_id}}}")).unwrap();
    let done = std::process::Command::new(common::DRIVER)
        .args([
            "cleanup",
            "--state-dir",
            bed.state_dir.to_str().unwrap(),
            "--builds-dir",
            builds.to_str().unwrap(),
        ])
        .envs(bed.sim.env())
        .env("JOB_RESPONSE_FILE", &payload)
        .env("CUSTOM_ENV_CI_JOB_ID", job_id)
        .env(
            "CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN",
            vm.split('-').nth(1).unwrap(),
        )
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        !job_dir.exists(),
        "builds directory of the job survived cleanup"
    );
    bed.assert_nothing_left();
}

#[test]
fn host_cache_dir_survives_jobs_and_is_private_to_the_project() {
    let bed = Bed::new();
    let cache = bed.sim.root().join("host-cache");
    let bed = bed.option(["--cache-dir", cache.to_str().unwrap()]);
    let write = Job::new()
        .image(MACOS)
        .project("group/app")
        .script(["echo warm > /tmp/cache/marker"]);
    run_job(&bed.runner(), &write).assert_success();
    let read = Job::new()
        .image(MACOS)
        .project("group/app")
        .script(["cat /tmp/cache/marker"]);
    run_job(&bed.runner(), &read)
        .assert_success()
        .assert_log_contains("warm");
    let other = Job::new()
        .image(MACOS)
        .project("group/other")
        .script(["test ! -e /tmp/cache/marker && echo isolated"]);
    run_job(&bed.runner(), &other)
        .assert_success()
        .assert_log_contains("isolated");
    bed.assert_nothing_left();
}

#[test]
fn read_only_volumes_can_be_read_but_not_written() {
    let bed = Bed::new();
    let data = bed.sim.root().join("models");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("weights.bin"), "42").unwrap();
    let bed = bed.option([
        "--volume",
        &format!("{}:/opt/data/models:ro", data.display()),
    ]);
    let out = run_job(
        &bed.runner(),
        &Job::new().image(MACOS).script([
            "echo \"read $(cat /opt/data/models/weights.bin)\"",
            "if echo x > /opt/data/models/new; then echo WROTE; else echo refused-write; fi",
        ]),
    );
    out.assert_success()
        .assert_log_contains("read 42")
        .assert_log_contains("refused-write");
    assert!(!data.join("new").exists());
}

#[test]
fn volumes_work_in_linux_guests_through_virtiofs_mounts() {
    let bed = Bed::new();
    let data = bed.sim.root().join("shared");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "from host").unwrap();
    let bed = bed.option(["--volume", &format!("{}:/opt/shared", data.display())]);
    let out = run_job(
        &bed.runner(),
        &Job::new().image(LINUX).script([
            "cat /opt/shared/hello.txt; echo",
            "echo back > /opt/shared/reply.txt",
        ]),
    );
    out.assert_success().assert_log_contains("from host");
    assert_eq!(
        std::fs::read_to_string(data.join("reply.txt")).unwrap(),
        "back\n"
    );
}

#[test]
fn pull_policy_never_refuses_an_image_that_is_not_cached_before_cloning() {
    let bed = Bed::new().option(["--pull-policy", "never"]);
    let out = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    assert!(is_build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("pull policy is `never`");
    assert!(
        bed.sim.list().iter().all(|vm| vm.source != "OCI"),
        "the image was pulled"
    );
    // Once an admin has pulled it, the same job runs.
    bed.sim.tart_ok(["pull", MACOS]);
    run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"])).assert_success();
}

#[test]
fn pull_policy_always_pulls_again_and_if_not_present_does_not() {
    let bed = Bed::new();
    let first = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    first.assert_success().assert_log_contains("Pulled ");
    let second = run_job(&bed.runner(), &Job::new().image(MACOS).script(["true"]));
    second.assert_success();
    assert!(
        !second.log.contains("Pulled "),
        "if-not-present pulled a cached image"
    );
    let third = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_PULL_POLICY", "always")
            .script(["true"]),
    );
    third.assert_success().assert_log_contains("Pulled ");
}

#[test]
fn a_job_cannot_ask_for_a_pull_policy_the_admin_did_not_allow() {
    let bed = Bed::new().option(["--allowed-pull-policy", "if-not-present"]);
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_PULL_POLICY", "always")
            .script(["true"]),
    );
    assert!(is_build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("TART_PULL_POLICY=always is not allowed");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_PULL_POLICY", "sometimes")
            .script(["true"]),
    );
    out.assert_log_contains("unknown pull policy `sometimes`");
}

#[test]
fn excluded_and_unlisted_images_are_refused_with_the_rule_named() {
    let bed = Bed::new().option([
        "--exclude-image-expr",
        "vanilla",
        "--allow-image-expr",
        "^ghcr\\.io/cirruslabs/",
    ]);
    let out = run_job(
        &bed.runner(),
        &Job::new().image(common::MACOS_VANILLA).script(["true"]),
    );
    assert!(is_build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("is excluded on this runner (matches `vanilla`)");
    let bed = bed.image("registry.example.com/team/mac:1", Image::darwin());
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image("registry.example.com/team/mac:1")
            .script(["true"]),
    );
    out.assert_log_contains("not in this runner's allowed images");
    assert!(bed.sim.local_vms().is_empty());
}

#[test]
fn jobs_without_an_image_get_the_default_image() {
    let bed = Bed::new().option(["--default-image", LINUX]);
    run_job(&bed.runner(), &Job::new().script(["uname -s"]))
        .assert_success()
        .assert_log_contains("Linux");
}

#[test]
fn private_registry_credentials_from_job_variables_reach_tart_and_nowhere_else() {
    let image = "registry.example.com/team/xcode:16";
    let bed = Bed::new().image(
        image,
        Image::darwin().registry_auth("robot", "pa55-w0rd-xyz"),
    );
    let without = run_job(&bed.runner(), &Job::new().image(image).script(["true"]));
    assert!(
        matches!(without.verdict, Verdict::SystemFailure { .. }),
        "{:?}",
        without.verdict
    );
    without.assert_log_contains("AuthFailed");
    let with = Job::new()
        .image(image)
        .var("TART_REGISTRY", "registry.example.com")
        .var("TART_REGISTRY_USERNAME", "robot")
        .masked_var("TART_REGISTRY_PASSWORD", "pa55-w0rd-xyz")
        .script(["true"]);
    let out = run_job(&bed.runner(), &with);
    out.assert_success();
    assert!(!out.log.contains("pa55-w0rd-xyz") && !out.runner_log.contains("pa55-w0rd-xyz"));
    // Nothing was stored in the (simulated) keychain.
    let keychain = bed.sim.keychain_path();
    let stored = std::fs::read_to_string(&keychain).unwrap_or_default();
    assert!(
        !stored.contains("registry.example.com"),
        "credentials stored: {stored}"
    );
}

#[test]
fn explicit_cpu_memory_and_display_are_applied_to_the_vm() {
    // 2 CPUs: not the image's 4, and no more than a test host has (a VM never gets more
    // than the host's).
    let bed = Bed::new().option(["--cpu", "2", "--memory", "9000", "--display", "1280x800"]);
    let out = run_job(
        &bed.runner().cleanup_exec(None),
        &Job::new().image(MACOS).script(["true"]),
    );
    out.assert_success().assert_log_contains("2 CPUs, 9000 MiB");
    let vm = bed.sim.local_vms().into_iter().next().unwrap().name;
    let info = bed.sim.tart_ok(["get", &vm, "--format", "json"]);
    assert!(info.contains("1280x800"), "{info}");
}

#[test]
fn the_job_may_choose_its_shell() {
    let bed = Bed::new();
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_SHELL", "/usr/bin/bash")
            .script(["echo \"shell: $(readlink -f /proc/$$/exe)\""]),
    );
    out.assert_success()
        .assert_log_contains("shell: /usr/bin/bash");
    // gitlab-runner generates bash; a POSIX sh cannot run it, and the job log says why.
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_SHELL", "/bin/sh")
            .script(["true"]),
    );
    out.assert_log_contains("generates bash scripts");
    let out = run_job(
        &bed.runner(),
        &Job::new()
            .image(MACOS)
            .var("TART_EXECUTOR_SHELL", "bash; rm -rf /")
            .script(["true"]),
    );
    assert!(is_build_failure(&out.verdict), "{:?}", out.verdict);
    out.assert_log_contains("TART_EXECUTOR_SHELL");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
