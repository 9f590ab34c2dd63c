//! Shared by the tunnel_* tests: the real `portplane-agent run` under a Drop
//! guard that kills it by pid, its config, and small loopback servers.
// Test helpers: a failed setup panics the test that called it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portplane_e2e::sshd::Sshd;
use portplane_e2e::{free_port, workspace_bin};

/// A running `portplane-agent run --config FILE`, killed and reaped on drop.
pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Start the agent with `config` (TOML) written to `agent.toml`.
    pub fn start(config: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("portplane-agent-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(workspace_bin("portplane-agent"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,portplane_agent=debug")
            .env_remove("KUBECONFIG")
            .env_remove("TALOSCONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            dir,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Wait for the agent to exit by itself; its status, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Count of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait until the log shows `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        wait_until(
            timeout,
            || self.log_count(needle) >= n,
            || format!("agent log never had {n}x {needle:?}:\n{}", self.log()),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An agent config for `sshd` with the given `(name, listen port, target)` forwards.
pub fn config_for(sshd: &Sshd, forwards: &[(&str, u16, String)], extra: &str) -> String {
    let mut text = format!(
        "name = \"test\"\n{extra}\n[ssh]\nconfig = \"{}\"\nhost = \"{}\"\nkeepalive_interval = \"1s\"\nkeepalive_count_max = 3\n",
        sshd.ssh_config_path().display(),
        sshd.host_alias()
    );
    for (name, listen, target) in forwards {
        text.push_str(&format!(
            "\n[[forward]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{listen}\"\ntarget = \"{target}\"\n"
        ));
    }
    // The rewrites run under `run` too: keep them off the real home's files.
    let first = forwards[0].0;
    let dir = sshd.ssh_config_path().parent().unwrap().to_path_buf();
    text.push_str(&format!(
        "\n[kubeconfig]\nforward = \"{first}\"\npath = \"{}\"\n\
         [talosconfig]\nforward = \"{first}\"\npath = \"{}\"\n",
        dir.join("kubeconfig").display(),
        dir.join("talosconfig").display()
    ));
    text
}

/// `config` (from [`config_for`]) with a pool of one SSH session, so that
/// every connection of the test shares it: its queue, its pauses, its keys.
pub fn one_session(config: &str) -> String {
    with_sessions(config, 1)
}

/// `config` (from [`config_for`]) with a pool of `n` SSH sessions, whatever
/// the core count (the default).
pub fn with_sessions(config: &str, n: usize) -> String {
    config.replace("[ssh]\n", &format!("[ssh]\nsessions = {n}\n"))
}

/// [`config_for`] with one forward, the agent named `name`, and a
/// `[controller]` section: `endpoint` (`host:port`, plaintext on loopback),
/// the token file, the inventory cache in `dir`, and `extra` (TOML lines of
/// that section, e.g. `report_interval`). Further sections are appended by
/// the caller.
pub fn linked_config(
    sshd: &Sshd,
    name: &str,
    forward: (&str, u16, String),
    endpoint: &str,
    token: &Path,
    dir: &Path,
    extra: &str,
) -> String {
    config_for(sshd, &[forward], "").replace("name = \"test\"", &format!("name = \"{name}\""))
        + &format!(
            "[controller]\nendpoint = \"http://{endpoint}\"\ntoken_file = \"{}\"\n\
             inventory_cache = \"{}\"\n{extra}",
            token.display(),
            dir.join("inventory.json").display(),
        )
}

pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback echo server on its own threads; lives as long as the test.
pub fn echo_server() -> u16 {
    serve(|mut s| {
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// A loopback server that answers only after the client's EOF: it reads
/// everything, then sends it all back and closes (a request ended by
/// half-closing, as `nc -N` or an HTTP/1.0 client sends it).
pub fn answer_after_eof_server() -> u16 {
    serve(|mut s| {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).is_ok() {
            let _ = s.write_all(&all);
        }
    })
}

/// A loopback server that sends `bytes` (or forever when None) to each client.
pub fn source_server(bytes: Option<u64>) -> u16 {
    serve(move |mut s| {
        let buf = vec![0x5au8; 65536];
        let mut sent = 0u64;
        while bytes.is_none_or(|b| sent < b) {
            let n = bytes.map_or(buf.len() as u64, |b| (b - sent).min(buf.len() as u64));
            if s.write_all(&buf[..n as usize]).is_err() {
                return;
            }
            sent += n;
        }
    })
}

fn serve(handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

/// Connect to 127.0.0.1:port, send `msg`, read it back; Err on any failure.
pub fn echo_once(port: u16, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// An agent with one forward, "echo", to a fresh loopback echo server,
/// returned once an echo goes through; `ssh_extra` lines go into `[ssh]`.
pub fn echo_agent(sshd: &Sshd, ssh_extra: &str) -> (Agent, u16) {
    let echo = echo_server();
    let port = listen_port();
    let agent = Agent::start(
        &config_for(sshd, &[("echo", port, format!("127.0.0.1:{echo}"))], "")
            .replace("[ssh]\n", &format!("[ssh]\n{ssh_extra}")),
    );
    wait_echo(&agent, port, Duration::from_secs(20));
    (agent, port)
}

/// An agent with one forward, `name`, to 127.0.0.1:`target`, returned with
/// the forward's port once an SSH session is up.
pub fn forward_agent(sshd: &Sshd, name: &str, target: u16) -> (Agent, u16) {
    let port = listen_port();
    let agent = Agent::start(&config_for(
        sshd,
        &[(name, port, format!("127.0.0.1:{target}"))],
        "",
    ));
    agent.wait_log("ssh session up", 1, Duration::from_secs(20));
    (agent, port)
}

/// An agent with one SSH session and one forward, "bulk", to a fresh
/// [`source_server`] sending `bytes` to each client; returned with the
/// forward's port once the session is up.
pub fn one_session_source_agent(sshd: &Sshd, bytes: Option<u64>) -> (Agent, u16) {
    let source = source_server(bytes);
    let port = listen_port();
    let agent = Agent::start(&one_session(&config_for(
        sshd,
        &[("bulk", port, format!("127.0.0.1:{source}"))],
        "",
    )));
    agent.wait_log("ssh session up", 1, Duration::from_secs(20));
    (agent, port)
}

/// Wait until an echo through the tunnel succeeds.
pub fn wait_echo(agent: &Agent, port: u16, timeout: Duration) {
    wait_until(
        timeout,
        || echo_once(port, b"ping").is_ok(),
        || format!("no echo through 127.0.0.1:{port}:\n{}", agent.log()),
    );
}

pub fn listen_port() -> u16 {
    free_port().unwrap()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
