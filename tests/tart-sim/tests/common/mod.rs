//! Test bed for the simulator's own tests: a private TART_HOME and host scope per test,
//! `tart` invocations, background `tart run`s that are always cleaned up (Drop guard).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TART: &str = env!("CARGO_BIN_EXE_tart");

pub struct Bed {
    pub root: PathBuf,
    pub home: PathBuf,
    pub host: PathBuf,
    runs: Vec<Child>,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: o
                .status
                .code()
                .unwrap_or(128 + o.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn uniq() -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub const STD_CATALOGUE: &str = r#"{"images": {
  "ghcr.io/cirruslabs/macos-tahoe-base:latest": {"os": "darwin", "agent": true, "pull_ms": 150, "boot_delay_ms": 300},
  "ghcr.io/cirruslabs/macos-tahoe-vanilla:latest": {"os": "darwin", "agent": false, "pull_ms": 50},
  "ghcr.io/cirruslabs/ubuntu:latest": {"os": "linux", "agent": true, "pull_ms": 50, "cpu": 4, "memory_mib": 4096, "disk_gb": 20}
}}"#;

pub const MAC_BASE: &str = "ghcr.io/cirruslabs/macos-tahoe-base:latest";
pub const MAC_VANILLA: &str = "ghcr.io/cirruslabs/macos-tahoe-vanilla:latest";
pub const UBUNTU: &str = "ghcr.io/cirruslabs/ubuntu:latest";

impl Bed {
    pub fn new() -> Bed {
        let root = PathBuf::from(format!("/tmp/tart-sim-test-{}", uniq()));
        let home = root.join("home");
        let host = root.join("host");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        let b = Bed {
            root,
            home,
            host,
            runs: vec![],
        };
        b.catalogue(STD_CATALOGUE);
        b
    }

    pub fn catalogue(&self, json: &str) {
        std::fs::write(self.home.join("catalogue.json"), json).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(TART);
        c.args(args)
            .env("TART_HOME", &self.home)
            .env("TART_SIM_HOST", &self.host)
            .env("CI", "true")
            .env_remove("TART_REGISTRY_USERNAME")
            .env_remove("TART_REGISTRY_PASSWORD")
            .env_remove("TART_REGISTRY_HOSTNAME")
            .env("HOME", &self.root)
            // The simulated user database's home for this user (its keychain).
            .env("TART_SIM_USER_HOME", &self.root);
        c
    }

    pub fn tart(&self, args: &[&str]) -> Out {
        self.cmd(args).stdin(Stdio::null()).output().unwrap().into()
    }

    pub fn tart_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().unwrap().into()
    }

    pub fn ok(&self, args: &[&str]) -> Out {
        let o = self.tart(args);
        assert_eq!(
            o.code, 0,
            "tart {args:?} failed: stdout={:?} stderr={:?}",
            o.stdout, o.stderr
        );
        o
    }

    pub fn clone_vm(&self, src: &str, name: &str) {
        self.ok(&["clone", src, name]);
    }

    /// Starts `tart run` in the background; its stdout/stderr go to files in the bed.
    pub fn run_bg(&mut self, vm: &str, extra: &[&str]) -> usize {
        let mut args = vec!["run", "--no-graphics"];
        args.extend_from_slice(extra);
        args.push(vm);
        let out = std::fs::File::create(self.root.join(format!("{vm}.run.out"))).unwrap();
        let err = std::fs::File::create(self.root.join(format!("{vm}.run.err"))).unwrap();
        let child = self
            .cmd(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.runs.push(child);
        self.runs.len() - 1
    }

    pub fn run_pid(&self, idx: usize) -> i32 {
        self.runs[idx].id() as i32
    }

    /// Waits (bounded) for a background `tart run` to exit; returns its exit code.
    pub fn wait_run(&mut self, idx: usize, timeout: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.runs[idx].try_wait().unwrap() {
                return Some(st.code().unwrap_or(128 + st.signal().unwrap_or(0)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn run_output(&self, vm: &str) -> (String, String) {
        (
            std::fs::read_to_string(self.root.join(format!("{vm}.run.out"))).unwrap_or_default(),
            std::fs::read_to_string(self.root.join(format!("{vm}.run.err"))).unwrap_or_default(),
        )
    }

    pub fn ip(&self, vm: &str) -> String {
        let o = self.tart(&["ip", vm, "--wait", "20"]);
        assert_eq!(
            o.code,
            0,
            "no IP for {vm}: {o:?}",
            o = (o.stdout.clone(), o.stderr.clone())
        );
        o.stdout.trim().to_string()
    }

    /// Runs a command over real SSH with password authentication.
    pub fn ssh(&self, ip: &str, user: &str, password: &str, command: &str) -> Out {
        let askpass = self.root.join("askpass.sh");
        if !askpass.exists() {
            std::fs::write(
                &askpass,
                "#!/bin/sh\nprintf '%s\\n' \"$SIM_SSH_PASSWORD\"\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let child = Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@{ip}"))
            .arg(command)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("SIM_SSH_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(20))
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.home.join("vms").join(vm)
    }

    pub fn set_fault(&self, vm: &str, key: &str, value: serde_json::Value) {
        let p = self.vm_dir(vm).join("sim.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["faults"][key] = value;
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    pub fn share_dir(&self, name: &str) -> PathBuf {
        let p = self.root.join("shares").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

pub fn wait_output(mut child: Child, timeout: Duration) -> Out {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap().into()
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.runs {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything else started against this home (e.g. by a test's own spawn).
        if let Ok(rd) = std::fs::read_dir(self.home.join("vms")) {
            for e in rd.flatten() {
                let _ = Command::new(TART)
                    .args(["stop", "-t", "2"])
                    .arg(e.file_name())
                    .env("TART_HOME", &self.home)
                    .env("TART_SIM_HOST", &self.host)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Tests that boot guests need root, /usr/sbin/sshd and the guest users.
pub fn can_boot() -> bool {
    is_root()
        && Path::new("/usr/sbin/sshd").exists()
        && Command::new("id")
            .arg("admin")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn pid_alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Processes whose command line mentions `needle` (to check nothing is left behind).
pub fn procs_matching(needle: &str) -> Vec<String> {
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&c).replace('\0', " ");
            if s.contains(needle) {
                v.push(format!("{n}: {s}"));
            }
        }
    }
    v
}
