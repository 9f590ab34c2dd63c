//! The VM's Docker port maps, read over SSH: `docker inspect <container>`
//! runs on the VM (the Talos node container, `<cluster>-controlplane-1` by
//! default), and every binding it records (host IP, host port, container
//! port, protocol) is reported to the controller, which turns them into the
//! host-side endpoints of NodePort ports (seed: Mac 9627 -> container 3000
//! -> NodePort 3000).
//!
//! Each poll opens its own short SSH connection with the agent's ssh.config,
//! keys and host-key policy (never Lima's ControlMaster socket), so the
//! tunnel's sessions and their data path are not involved. Polled at start,
//! every `[docker] interval` and after every tunnel reconnect; only while a
//! controller is configured (the facts are for it). Failures are logged,
//! the last good answer kept.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portplane_proto::v1alpha1 as pb;
use russh::ChannelMsg;

use crate::config::AgentConfig;
use crate::ssh::client_config::resolve_file;
use crate::ssh::session;
use crate::tunnel::pool::{Pool, PoolConfig};

/// `docker inspect` output beyond this is refused (one container's record
/// is a few KiB).
const MAX_OUTPUT: usize = 1024 * 1024;
/// Bindings reported at most (a container with more is misconfigured).
const MAX_BINDINGS: usize = 1024;
/// One poll (connect, exec, read) may take this long.
const POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// The latest bindings, shared with the controller link's reports.
pub type HostPorts = Arc<Mutex<Vec<pb::HostPort>>>;

/// The bindings Docker records for the first container of `inspect` output
/// (a JSON array): the live `NetworkSettings.Ports` when it has any, else
/// the configured `HostConfig.PortBindings` (a container without a network
/// of its own, or stopped). Keys look like `"3000/tcp"`.
pub fn parse_inspect(json: &[u8]) -> Result<Vec<pb::HostPort>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("docker inspect: not JSON: {e}"))?;
    let container = value
        .as_array()
        .and_then(|a| a.first())
        .ok_or("docker inspect: expected an array with one container")?;
    let live = &container["NetworkSettings"]["Ports"];
    let configured = &container["HostConfig"]["PortBindings"];
    let has_bindings = |v: &serde_json::Value| {
        v.as_object().is_some_and(|m| {
            m.values()
                .any(|b| b.as_array().is_some_and(|a| !a.is_empty()))
        })
    };
    let map = if has_bindings(live) { live } else { configured };
    let mut out = Vec::new();
    for (key, bindings) in map.as_object().into_iter().flatten() {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.as_array().into_iter().flatten() {
            let Some(host_port) = b["HostPort"]
                .as_str()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            let host_ip = b["HostIp"].as_str().unwrap_or_default();
            out.push(pb::HostPort {
                host_port: u32::from(host_port),
                container_port: u32::from(container_port),
                protocol: protocol.to_ascii_uppercase(),
                host_ip: if host_ip.is_empty() {
                    "0.0.0.0".into()
                } else {
                    portplane_core::text::truncate(host_ip, 64)
                },
            });
            if out.len() >= MAX_BINDINGS {
                return Ok(out);
            }
        }
    }
    out.sort_by_key(|h| (h.container_port, h.host_port, h.host_ip.clone()));
    Ok(out)
}

/// The container to inspect: `[docker] container`, else the Talos node
/// container of `[kubeconfig] cluster`.
pub fn container(config: &AgentConfig) -> String {
    config
        .docker
        .container
        .clone()
        .unwrap_or_else(|| format!("{}-controlplane-1", config.kubeconfig.cluster))
}

/// The command run on the VM. The container name is single-quoted for the
/// remote shell.
pub fn command(config: &AgentConfig) -> String {
    let name = container(config).replace('\'', "'\\''");
    format!("{} inspect '{name}'", config.docker.command)
}

/// One poll: connect, run the command, parse its output.
pub async fn poll(pool: &PoolConfig, command: &str) -> Result<Vec<pb::HostPort>, String> {
    let work = async {
        let host = resolve_file(&pool.ssh_config, &pool.host_alias, &pool.env)
            .map_err(|e| e.to_string())?;
        let ssh = session::connect(&host, &pool.tuning)
            .await
            .map_err(|e| e.to_string())?;
        let mut channel = ssh
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("ssh: cannot open a session channel: {e}"))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| format!("ssh: cannot run {command:?}: {e}"))?;
        let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } if stderr.len() < 4096 => {
                    stderr.extend_from_slice(&data)
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
            if stdout.len() > MAX_OUTPUT {
                return Err(format!(
                    "{command:?}: more than {MAX_OUTPUT} bytes of output"
                ));
            }
        }
        let _ = ssh
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        if status != Some(0) {
            let why = String::from_utf8_lossy(&stderr)
                .trim()
                .chars()
                .take(300)
                .collect::<String>();
            return Err(format!("{command:?} on the VM failed ({status:?}): {why}"));
        }
        parse_inspect(&stdout)
    };
    tokio::time::timeout(POLL_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("{command:?}: no answer within {POLL_TIMEOUT:?}")))
}

/// Poll until dropped, keeping `out` current: every `[docker] interval`,
/// and at once whenever the tunnel's pool gets a session back after having
/// none (the VM may have been recreated with other maps).
pub async fn keep_polling(
    config: AgentConfig,
    pool: PoolConfig,
    tunnel: Arc<Pool>,
    out: HostPorts,
) {
    let command = command(&config);
    let mut tick = tokio::time::interval(config.docker.interval);
    let mut changes = tunnel.subscribe();
    // The oldest live session's start: it moves when every session was lost
    // and one came back (a VM restart), even if this task saw the loss and
    // the return as one change; a younger session reconnecting leaves it.
    let mut up_since = tunnel.up_since();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changes.changed() => {
                let now = tunnel.up_since();
                let reconnected = now.is_some() && now != up_since;
                up_since = now;
                if !reconnected {
                    continue;
                }
                tracing::debug!("tunnel reconnected: reading the docker port maps again");
            }
        }
        match poll(&pool, &command).await {
            Ok(bindings) => {
                if last_error.take().is_some() {
                    tracing::info!(%command, "docker port maps readable again");
                }
                tracing::debug!(bindings = bindings.len(), "docker port maps");
                if let Ok(mut slot) = out.lock() {
                    *slot = bindings;
                }
            }
            Err(error) => {
                // Once per distinct problem: a VM without docker would
                // otherwise log every interval.
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot read the VM's docker port maps");
                }
                last_error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker 20.10's record of `docker run -p 127.0.0.3:9627:3000 -p
    /// 6379:6379/tcp -p 127.0.0.3:5353:53/udp` without a network of its own
    /// (trimmed to the fields read).
    const CREATED: &str = r#"[{"HostConfig":{"PortBindings":{
        "3000/tcp":[{"HostIp":"127.0.0.3","HostPort":"9627"}],
        "6379/tcp":[{"HostIp":"","HostPort":"6379"}],
        "53/udp":[{"HostIp":"127.0.0.3","HostPort":"5353"}],
        "8080/tcp":[{"HostIp":"","HostPort":""}]}},
      "NetworkSettings":{"Ports":{}}}]"#;

    #[test]
    fn configured_bindings_when_no_live_ones() {
        let got = parse_inspect(CREATED.as_bytes()).unwrap();
        let tuples: Vec<(u32, u32, &str, &str)> = got
            .iter()
            .map(|h| {
                (
                    h.host_port,
                    h.container_port,
                    h.protocol.as_str(),
                    h.host_ip.as_str(),
                )
            })
            .collect();
        assert_eq!(
            tuples,
            [
                (5353, 53, "UDP", "127.0.0.3"),
                (9627, 3000, "TCP", "127.0.0.3"),
                (6379, 6379, "TCP", "0.0.0.0"),
            ]
        );
    }

    #[test]
    fn live_bindings_win() {
        let json = r#"[{"HostConfig":{"PortBindings":{"3000/tcp":[{"HostIp":"","HostPort":"1"}]}},
          "NetworkSettings":{"Ports":{"3000/tcp":[{"HostIp":"0.0.0.0","HostPort":"9627"},{"HostIp":"::","HostPort":"9627"}],"9000/tcp":null}}}]"#;
        let got = parse_inspect(json.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            got.iter()
                .all(|h| h.host_port == 9627 && h.container_port == 3000)
        );
    }

    #[test]
    fn bad_output_is_an_error_naming_docker_inspect() {
        assert!(
            parse_inspect(b"Error: No such object")
                .unwrap_err()
                .contains("docker inspect")
        );
        assert!(parse_inspect(b"[]").is_err());
    }

    #[test]
    fn the_command_quotes_the_container() {
        let mut config = AgentConfig::default();
        assert_eq!(command(&config), "docker inspect 'joelclaw-controlplane-1'");
        config.docker.container = Some("it's".into());
        config.docker.command = "docker -H unix:///run/d.sock".into();
        assert_eq!(
            command(&config),
            "docker -H unix:///run/d.sock inspect 'it'\\''s'"
        );
    }
}
