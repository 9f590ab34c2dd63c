//! The harness sshd is a real OpenSSH server reachable with russh, using the
//! Lima-style ssh.config it writes.

use std::sync::Arc;

use portplane_e2e::sshd::Sshd;
use russh::ChannelMsg;
use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{PrivateKeyWithHashAlg, load_secret_key};

struct AcceptAny;

impl client::Handler for AcceptAny {
    type Error = russh::Error;

    // Lima's config says StrictHostKeyChecking no + /dev/null known hosts.
    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn exec(sshd: &Sshd, command: &str) -> anyhow::Result<(u32, String)> {
    let key = load_secret_key(sshd.identity_file(), None)?;
    let config = Arc::new(client::Config::default());
    let mut session = client::connect(config, ("127.0.0.1", sshd.port()), AcceptAny).await?;
    let hash = session.best_supported_rsa_hash().await?.flatten();
    let auth = session
        .authenticate_publickey(sshd.user(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await?;
    anyhow::ensure!(auth.success(), "public key authentication failed");
    let mut channel = session.channel_open_session().await?;
    channel.exec(true, command).await?;
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            _ => {}
        }
    }
    session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await?;
    Ok((code.unwrap_or(u32::MAX), String::from_utf8(out)?))
}

#[tokio::test]
async fn russh_runs_a_command_on_the_real_sshd() {
    let sshd = Sshd::start().unwrap();
    let token = format!("portplane-{}", std::process::id());
    let (code, out) = exec(&sshd, &format!("echo {token}; exit 3")).await.unwrap();
    assert_eq!(out.trim(), token);
    assert_eq!(code, 3);
}

#[test]
fn ssh_config_has_the_keys_lima_writes() {
    let sshd = Sshd::start().unwrap();
    let config = std::fs::read_to_string(sshd.ssh_config_path()).unwrap();
    for line in [
        "Host lima-colima".to_string(),
        "  StrictHostKeyChecking no".into(),
        "  UserKnownHostsFile /dev/null".into(),
        "  NoHostAuthenticationForLocalhost yes".into(),
        "  ControlMaster auto".into(),
        "  ControlPersist yes".into(),
        "  Hostname 127.0.0.1".into(),
        format!("  Port {}", sshd.port()),
        format!("  User {}", sshd.user()),
        "  Ciphers \"^aes128-gcm@openssh.com,aes256-gcm@openssh.com\"".into(),
        "  BatchMode yes".into(),
        "  IdentitiesOnly yes".into(),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "missing {line:?} in:\n{config}"
        );
    }
    // OpenSSH's own client accepts it: `ssh -G` resolves the alias.
    let resolved = std::process::Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config_path())
        .args(["-G", "lima-colima"])
        .output()
        .unwrap();
    let resolved = String::from_utf8(resolved.stdout).unwrap();
    assert!(
        resolved
            .lines()
            .any(|l| l == format!("port {}", sshd.port())),
        "{resolved}"
    );
}

#[test]
fn stop_kills_sshd_and_its_sessions_by_pid() {
    let mut sshd = Sshd::start().unwrap();
    let pid = sshd.pid().unwrap();
    // A live session: OpenSSH's client holds a connection open.
    let mut client = std::process::Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config_path())
        .args(["-o", "ControlMaster=no", "lima-colima", "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let running_sleep = || {
        portplane_e2e::sshd::descendants(pid).iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    };
    while !running_sleep() {
        assert!(
            std::time::Instant::now() < deadline,
            "no session appeared: {}",
            sshd.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sessions = portplane_e2e::sshd::descendants(pid);
    sshd.stop();
    for p in std::iter::once(pid).chain(sessions) {
        assert!(!portplane_e2e::sshd::is_alive(p), "pid {p} survived stop");
    }
    // The client sees its connection drop and exits.
    let status = client.wait().unwrap();
    assert!(!status.success());
}
