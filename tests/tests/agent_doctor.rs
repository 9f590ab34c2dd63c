//! `portplane-agent doctor` against the real stack: the local control plane
//! (tests/src/cluster.rs), the real sshd standing in for the VM, the real
//! controller, and the real agent holding both forwards. Every check passes;
//! then each fault is injected and fails its own check with its own hint:
//! kubeconfig pointing elsewhere, a stale context, a stray `ssh -L` on a
//! runtime port, a crash-looping service, sshd stopped, the agent stopped.
//!
//! The Talos API forward targets the kube-apiserver, which speaks TLS with
//! the same kind of credentials: the talosconfig carries the control plane's
//! CA and admin client certificate, so the handshake is really verified.
//!
//! STAND-IN: `systemctl` is a recording stand-in (see service_support), the
//! only one, because no service manager runs on these machines; the test
//! starts `run` itself where systemd would.

// Test code: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;
mod tunnel_support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, scoped_config};
use portplane_e2e::sshd::Sshd;
use serde_json::Value;
use service_support::{Guarded, ServiceManager, text};
use tunnel_support::{Agent, config_for, echo_server, listen_port, wait_until};

/// The scripts/cluster kubeconfig with its cluster and context renamed to
/// `name` (a second talosctl generation, `-2`, so an older one can be stale).
fn kubeconfig_named(plane: &ControlPlane, name: &str) -> String {
    std::fs::read_to_string(plane.kubeconfig())
        .unwrap()
        .replace("portplane-local", name)
}

fn talosconfig(plane: &ControlPlane, context: &str) -> String {
    portplane_e2e::agent_cli::talosconfig_from_kubeconfig(plane.kubeconfig(), context).unwrap()
}

fn doctor(svc: &ServiceManager, config: &Path, env: &[(&str, &Path)]) -> (bool, Value, String) {
    let mut cmd = svc.agent(&[
        "doctor",
        "--config",
        &config.display().to_string(),
        "-o",
        "json",
        "--platform",
        "systemd",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    eprintln!("doctor took {:?}", started.elapsed());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v, text(&out))
}

fn check<'v>(report: &'v Value, id: &str) -> &'v Value {
    report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no check {id}: {report:#}"))
}

/// The fault fails check `id` (and the run exits 1), its hint contains `hint`.
fn assert_fails(result: &(bool, Value, String), id: &str, hint: &str) {
    let (ok, report, out) = result;
    assert!(!ok, "doctor passed with the fault for {id}:\n{out}");
    let c = check(report, id);
    assert_eq!(c["result"], "fail", "{id}:\n{out}");
    let h = c["hint"].as_str().unwrap_or_default();
    assert!(h.contains(hint), "{id}: hint {h:?} lacks {hint:?}\n{out}");
    assert!(
        c["problem"].as_str().is_some_and(|p| !p.is_empty()),
        "{out}"
    );
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["result"] != "pass")
                .map(|c| format!("{}: {} / {}", c["id"], c["problem"], c["hint"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn doctor_passes_on_the_real_stack_and_each_fault_fails_its_own_check() {
    let plane = ControlPlane::shared();
    let apiserver = plane.apiserver_port().unwrap();
    let scope = Scope::new(plane, "doctor");
    let mut sshd = Sshd::start().unwrap();
    let (kube, talos, runtime) = (listen_port(), listen_port(), listen_port());
    let controller = Controller::start(
        plane,
        &scoped_config("doctor", "agents: {namespace: doctor}\n"),
    );
    scope.apply(&scope.service_yaml(
        "redis",
        "ClusterIP",
        &[(runtime, None)],
        &[("tailscale.com/expose", "true")],
    ));
    let runtime_name = format!("doctor.redis.{runtime}");
    scope.wait_oport(&runtime_name, "published", |_| true);

    let dir = tempfile::tempdir().unwrap();
    let cluster = "portplane-local-2";
    let kubeconfig = dir.path().join("kubeconfig");
    let talosconfig_path = dir.path().join("talosconfig");
    std::fs::write(&kubeconfig, kubeconfig_named(plane, cluster)).unwrap();
    std::fs::write(&talosconfig_path, talosconfig(plane, cluster)).unwrap();
    let cache = dir.path().join("cache/inventory.json");
    // The agent ("test") authenticates as ServiceAccount portplane-agent-test.
    let token = portplane_e2e::agents::write_token(
        dir.path(),
        &portplane_e2e::agents::agent_token(plane, "doctor", "test"),
    );
    let config_text = config_for(
        &sshd,
        &[
            ("kube-apiserver", kube, format!("127.0.0.1:{apiserver}")),
            ("talos-api", talos, format!("127.0.0.1:{apiserver}")),
        ],
        &format!(
            "socket = \"{}\"",
            dir.path().join("state/agent.sock").display()
        ),
    )
    // config_for points both rewrites at the first forward and at files
    // beside sshd; this test wants each at its own forward and file.
    .split("\n[kubeconfig]")
    .next()
    .unwrap()
    .to_string()
        + &format!(
            "\n[kubeconfig]\npath = \"{}\"\ncluster = \"portplane-local\"\nforward = \"kube-apiserver\"\n\
             [talosconfig]\npath = \"{}\"\ncontext = \"portplane-local\"\nforward = \"talos-api\"\nnode = \"10.5.0.2\"\n\
             [controller]\nendpoint = \"http://127.0.0.1:{}\"\ninventory_cache = \"{}\"\ntoken_file = \"{}\"\n",
            kubeconfig.display(),
            talosconfig_path.display(),
            controller.grpc_port,
            cache.display(),
            token.display()
        );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, &config_text).unwrap();

    // Installed (stand-in systemctl), then started where systemd would.
    let svc = ServiceManager::new();
    let out = svc.run(&[
        "install",
        "--config",
        &config.display().to_string(),
        "--platform",
        "systemd",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut agent = Some(Agent::start(&config_text));
    let pid = agent.as_ref().unwrap().pid().unwrap();
    let running = format!(
        "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID={pid}\nExecMainStatus=0\nNRestarts=0\n"
    );
    svc.systemd_shows(&running);

    // All green once the tunnel is up, the rewrites are done and the
    // controller's inventory is cached.
    let last = std::cell::RefCell::new((false, Value::Null, String::new()));
    wait_until(
        Duration::from_secs(60),
        || {
            *last.borrow_mut() = doctor(&svc, &config, &[]);
            last.borrow().0
        },
        || {
            let l = last.borrow();
            format!(
                "doctor never passed: {:#?}\n{}\nagent log:\n{}",
                failed(&l.1),
                l.2,
                agent.as_ref().map(Agent::log).unwrap_or_default()
            )
        },
    );
    let report = last.borrow().1.clone();
    assert!(failed(&report).is_empty(), "{report:#}");
    for id in [
        "service-installed",
        "service-crash-loop",
        "agent-socket",
        "forward-kube-apiserver",
        "forward-talos-api",
        "ssh-config",
        "ssh-answers",
        "ssh-nodelay",
        "kubeconfig-points",
        "kubeconfig-stale",
        "kube-api",
        "talosconfig-points",
        "talos-api",
        "runtime-ports",
        "controller",
    ] {
        assert_eq!(check(&report, id)["result"], "pass", "{id}: {report:#}");
    }
    assert!(
        check(&report, "kube-api")["name"]
            .as_str()
            .unwrap()
            .contains("you are portplane-admin"),
        "{report:#}"
    );
    // The text form: a mark per check and the summary.
    let out = svc
        .agent(&[
            "doctor",
            "--config",
            &config.display().to_string(),
            "--platform",
            "systemd",
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    println!("{t}");
    assert!(t.contains("√ the kube API answers"), "{t}");
    assert!(t.contains("Status check results are √"), "{t}");

    // Fault: the kubeconfig kubectl uses points elsewhere (straight at the
    // API server, not the forward).
    let elsewhere = dir.path().join("elsewhere.kubeconfig");
    std::fs::write(&elsewhere, kubeconfig_named(plane, cluster)).unwrap();
    let r = doctor(&svc, &config, &[("KUBECONFIG", &elsewhere)]);
    assert_fails(&r, "kubeconfig-points", "portplane-agent rewrite --config");
    assert!(
        check(&r.1, "kubeconfig-points")["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("https://127.0.0.1:{apiserver}")),
        "{}",
        r.2
    );

    // Fault: a stale context of an older generation on a dead port.
    let dead = listen_port();
    let stale = dir.path().join("stale.kubeconfig");
    let current = std::fs::read_to_string(&kubeconfig).unwrap();
    let older = kubeconfig_named(plane, "portplane-local-1").replace(
        &format!("https://127.0.0.1:{apiserver}"),
        &format!("https://127.0.0.1:{dead}"),
    );
    std::fs::write(&stale, &current).unwrap();
    std::fs::write(dir.path().join("older.kubeconfig"), older).unwrap();
    // kubectl merges KUBECONFIG's files (plane.kubectl() would pin one).
    let merged = Command::new(plane.bindir().join("kubectl"))
        .env(
            "KUBECONFIG",
            format!(
                "{}:{}",
                stale.display(),
                dir.path().join("older.kubeconfig").display()
            ),
        )
        .args(["config", "view", "--flatten", "--raw"])
        .output()
        .unwrap();
    assert!(merged.status.success(), "{}", text(&merged));
    std::fs::write(&stale, &merged.stdout).unwrap();
    let r = doctor(&svc, &config, &[("KUBECONFIG", &stale)]);
    assert_fails(
        &r,
        "kubeconfig-stale",
        "kubectl config delete-context portplane-local-1",
    );
    assert_eq!(
        check(&r.1, "kubeconfig-points")["result"],
        "pass",
        "{}",
        r.2
    );

    // Fault: a stray `ssh -L` on a runtime port from the cached inventory.
    let echo = echo_server();
    let stray = Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config_path())
        .args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-L",
        ])
        .arg(format!("127.0.0.1:{runtime}:127.0.0.1:{echo}"))
        .arg(sshd.host_alias())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stray = Guarded(stray);
    wait_until(
        Duration::from_secs(15),
        || TcpStream::connect(("127.0.0.1", runtime)).is_ok(),
        || "the stray ssh -L never listened".into(),
    );
    let r = doctor(&svc, &config, &[]);
    let stray_pid = stray.id();
    drop(stray);
    let id = format!("runtime-port-{runtime}");
    assert_fails(&r, &id, &format!("kill {stray_pid}"));
    assert!(
        check(&r.1, &id)["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {stray_pid} (ssh)")),
        "{}",
        r.2
    );

    // Fault: the service is crash-looping.
    svc.systemd_shows(
        "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\nExecMainStatus=1\nNRestarts=7\n",
    );
    let r = doctor(&svc, &config, &[]);
    assert_fails(
        &r,
        "service-crash-loop",
        "journalctl -u portplane-agent.service",
    );
    svc.systemd_shows(&running);

    // Fault: sshd (the VM) stopped.
    sshd.stop();
    let r = doctor(&svc, &config, &[]);
    assert_fails(&r, "ssh-answers", "colima start");
    sshd.restart().unwrap();

    // Fault: the agent stopped.
    drop(agent.take());
    let r = doctor(&svc, &config, &[]);
    assert_fails(
        &r,
        "agent-socket",
        "sudo systemctl start portplane-agent.service",
    );
    assert_fails(&r, "forward-kube-apiserver", "start the agent");
    drop(controller);
}
