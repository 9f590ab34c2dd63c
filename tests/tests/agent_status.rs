//! `portplane-agent status` against the real agent (over the real sshd):
//! each forward Up with live connection counts, `--json` parses, the socket
//! is private, and with no agent it exits 1 with the command that starts it.
//! systemd readiness: READY=1 arrives on NOTIFY_SOCKET once the listeners
//! are bound.
//!
//! STAND-IN: `systemctl` is a recording stand-in (see service_support); it
//! is only asked how the service looks.

// Test code: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;
mod tunnel_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use service_support::{ServiceManager, mode, stdout, text};
use tunnel_support::{Agent, config_for, echo_server, listen_port, wait_echo, wait_until};

fn held_echo(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hold").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hold");
    s
}

#[test]
fn status_shows_forwards_up_with_live_counts_and_exits_1_without_agent() {
    let sshd = Sshd::start().unwrap();
    let (echo_a, echo_b) = (echo_server(), echo_server());
    let (a, b) = (listen_port(), listen_port());
    let sockdir = tempfile::tempdir().unwrap();
    let socket = sockdir.path().join("state/agent.sock");
    let agent = Agent::start(&config_for(
        &sshd,
        &[
            ("kube-apiserver", a, format!("127.0.0.1:{echo_a}")),
            ("talos-api", b, format!("127.0.0.1:{echo_b}")),
        ],
        &format!("socket = \"{}\"", socket.display()),
    ));
    wait_echo(&agent, a, Duration::from_secs(20));
    wait_echo(&agent, b, Duration::from_secs(20));
    let held = [held_echo(a), held_echo(a), held_echo(b)];

    let svc = ServiceManager::new();
    let sock = socket.display().to_string();
    let status_json = |svc: &ServiceManager| {
        let out = svc.run(&[
            "status",
            "--json",
            "--socket",
            &sock,
            "--platform",
            "systemd",
        ]);
        (out.status.success(), out)
    };
    // The counts are live: wait until the agent has counted all three.
    let last = std::cell::RefCell::new(String::new());
    wait_until(
        Duration::from_secs(10),
        || {
            let (ok, out) = status_json(&svc);
            *last.borrow_mut() = text(&out);
            ok && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["agent"]["forwards"][0]["active_connections"] == 2)
        },
        || {
            format!(
                "status never showed 2 active connections: {}",
                last.borrow()
            )
        },
    );
    let (_, out) = status_json(&svc);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent_json = &v["agent"];
    assert_eq!(agent_json["pid"], agent.pid().unwrap(), "{v:#}");
    let f = &agent_json["forwards"];
    assert_eq!(f[0]["name"], "kube-apiserver");
    assert_eq!(f[0]["listen"], format!("127.0.0.1:{a}"));
    assert_eq!(f[0]["target"], format!("127.0.0.1:{echo_a}"));
    assert_eq!(f[0]["state"], "Up");
    assert_eq!(f[0]["active_connections"], 2);
    // wait_echo's probes plus the held ones.
    assert!(f[0]["total_connections"].as_u64().unwrap() >= 3, "{v:#}");
    assert_eq!(f[1]["name"], "talos-api");
    assert_eq!(f[1]["state"], "Up");
    assert_eq!(f[1]["active_connections"], 1);

    // Bytes each way: 1 MiB echoed through the held talos-api connection
    // shows up exactly on both of that forward's counters.
    let counted = |v: &serde_json::Value| {
        let f = &v["agent"]["forwards"][1];
        (
            f["bytes_from_clients"].as_u64().unwrap(),
            f["bytes_to_clients"].as_u64().unwrap(),
        )
    };
    let before = counted(&v);
    assert!(before.0 >= 4 && before.1 >= 4, "the probes' bytes: {v:#}");
    const MIB: u64 = 1 << 20;
    let mut conn = &held[2];
    let chunk = vec![9u8; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    for _ in 0..MIB / chunk.len() as u64 {
        conn.write_all(&chunk).unwrap();
        conn.read_exact(&mut back).unwrap();
    }
    let last = std::cell::RefCell::new((0, 0));
    wait_until(
        Duration::from_secs(10),
        || {
            let (_, out) = status_json(&svc);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
                *last.borrow_mut() = counted(&v);
                counted(&v) == (before.0 + MIB, before.1 + MIB)
            })
        },
        || {
            format!(
                "bytes {before:?} + 1 MiB each way never showed; last {:?}",
                last.borrow()
            )
        },
    );
    assert!(
        agent_json["ssh"]["sessions_up"].as_u64().unwrap() >= 1,
        "{v:#}"
    );
    assert!(agent_json["ssh"]["up_since"].is_string(), "{v:#}");
    assert_eq!(
        agent_json["ssh"]["host"],
        format!("{}@127.0.0.1:{}", sshd.user(), sshd.port())
    );
    assert!(agent_json["controller"].is_null());
    assert_eq!(v["service"]["manager"], "systemd");
    assert_eq!(v["service"]["installed"], false);
    // The stand-in was asked how the unit looks.
    assert!(
        svc.calls()
            .iter()
            .any(|c| c.starts_with("systemctl show portplane-agent.service")),
        "{:?}",
        svc.calls()
    );

    // How launchd sees it, read from `launchctl print` (stand-in).
    svc.launchd_prints(&format!(
        "system/dev.portplane.agent = {{\n\tactive count = 1\n\tstate = running\n\truns = 2\n\tpid = {}\n\tlast exit code = 0\n}}\n",
        agent.pid().unwrap()
    ));
    let out = svc.run(&[
        "status",
        "--json",
        "--socket",
        &sock,
        "--platform",
        "launchd",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["service"]["name"], "dev.portplane.agent", "{v:#}");
    assert_eq!(v["service"]["loaded"], true, "{v:#}");
    assert_eq!(v["service"]["running"], true, "{v:#}");
    assert_eq!(v["service"]["pid"], agent.pid().unwrap(), "{v:#}");
    assert_eq!(v["service"]["last_exit"], 0, "{v:#}");
    assert_eq!(v["service"]["restarts"], 2, "{v:#}");
    assert!(
        svc.calls()
            .iter()
            .any(|c| c == "launchctl print system/dev.portplane.agent"),
        "{:?}",
        svc.calls()
    );

    // The text form: a row per forward.
    let out = svc.run(&["status", "--socket", &sock, "--platform", "systemd"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = stdout(&out);
    println!("{t}");
    let row = t
        .lines()
        .find(|l| l.starts_with("kube-apiserver"))
        .unwrap_or_else(|| panic!("{t}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], format!("127.0.0.1:{a}"), "{t}");
    assert_eq!(cols[2], format!("127.0.0.1:{echo_a}"), "{t}");
    assert_eq!(cols[3..5], ["Up", "2"], "{t}");
    assert!(
        t.contains("service: systemd portplane-agent.service"),
        "{t}"
    );

    // Only the agent's user can reach the socket.
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);

    // Releasing connections is seen too.
    drop(held);
    wait_until(
        Duration::from_secs(10),
        || {
            let (_, out) = status_json(&svc);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["agent"]["forwards"][0]["active_connections"] == 0)
        },
        || "active connections never dropped to 0".into(),
    );

    // No agent: one sentence, the start command, exit 1. With the unit
    // installed, the hint is systemctl's.
    drop(agent);
    let out = svc.run(&["status", "--socket", &sock, "--platform", "systemd"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("portplane-agent is not running"), "{err}");
    assert!(err.contains("sudo portplane-agent install"), "{err}");
    let unit = svc
        .root()
        .join("etc/systemd/system/portplane-agent.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "[Service]\n").unwrap();
    let out = svc.run(&[
        "status",
        "--json",
        "--socket",
        &sock,
        "--platform",
        "launchd",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["agent"].is_null(), "{v:#}");
    let out = svc.run(&["status", "--socket", &sock, "--platform", "systemd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("start it: sudo systemctl start portplane-agent.service"),
        "{err}"
    );
}

#[test]
fn systemd_hears_ready_once_every_listener_is_bound() {
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let port = listen_port();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        config_for(
            &sshd,
            &[("kube-apiserver", port, format!("127.0.0.1:{echo}"))],
            &format!("socket = \"{}\"", dir.path().join("agent.sock").display()),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(portplane_e2e::workspace_bin("portplane-agent"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = listener.recv(&mut buf);
    // At READY=1 the listener is bound: a connection is accepted at once.
    let bound = TcpStream::connect(("127.0.0.1", port)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.unwrap_or_else(|e| {
        panic!(
            "no READY=1 within 20 s ({e}):\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        )
    });
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    assert!(bound, "the forward was not listening when READY=1 arrived");
}
