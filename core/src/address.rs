//! `host:port` targets and loopback listen addresses: the one parser the
//! controller's `operatorPorts[].target` and the agent's `[[forward]].target`
//! both use.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::names::is_dns_name;

/// `host:port` as the SSH server resolves it: the host an IP address (IPv6
/// may be in brackets) or a DNS name, the port 1-65535.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// Text that is not `host:port`; the message quotes it and says what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected \"host:port\" (an IP address or DNS name, a port 1-65535), e.g. \"10.5.0.2:6443\", got {0:?}"
)]
pub struct BadHostPort(pub String);

impl HostPort {
    /// Parse `host:port`, `[v6]:port` or `v6:port` (the last colon splits).
    pub fn parse(s: &str) -> Result<HostPort, BadHostPort> {
        let bad = || BadHostPort(s.to_string());
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad());
            }
            return Ok(HostPort {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || !(host.parse::<IpAddr>().is_ok() || is_dns_name(host)) {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl std::str::FromStr for HostPort {
    type Err = BadHostPort;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPort::parse(s)
    }
}

impl TryFrom<String> for HostPort {
    type Error = BadHostPort;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostPort::parse(&s)
    }
}

impl From<HostPort> for String {
    fn from(t: HostPort) -> String {
        t.to_string()
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The rule for where an operator port listens: loopback only (127.0.0.0/8
/// or ::1), so the tunnel is never reachable from the network, and on a
/// fixed port (the kubeconfig and talosconfig point at it). The error says
/// what was given and what was expected.
pub fn check_loopback_listen(listen: SocketAddr) -> Result<(), String> {
    if !listen.ip().is_loopback() {
        return Err(format!(
            "{listen} is not a loopback address; operator ports listen on loopback only \
             (127.0.0.0/8 or ::1), e.g. \"127.0.0.1:{}\"",
            listen.port()
        ));
    }
    if listen.port() == 0 {
        return Err("expected a fixed port, not 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_brackets() {
        let t = HostPort::parse("10.5.0.2:6443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.5.0.2", 6443));
        let t = HostPort::parse("[::1]:50000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 50000));
        assert_eq!(t.to_string(), "[::1]:50000");
        let t = HostPort::parse("redis.joelclaw.svc:6379").unwrap();
        assert_eq!(t.to_string(), "redis.joelclaw.svc:6379");
    }

    #[test]
    fn refusals_quote_the_text() {
        for bad in ["h", "h:", ":80", "h:0", "h:70000", "h_x:1", "a..b:1"] {
            let err = HostPort::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("expected \"host:port\"") && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn listen_must_be_loopback() {
        assert!(check_loopback_listen("127.0.0.2:16443".parse().unwrap()).is_ok());
        assert!(check_loopback_listen("[::1]:16443".parse().unwrap()).is_ok());
        let err = check_loopback_listen("0.0.0.0:16443".parse().unwrap()).unwrap_err();
        assert!(
            err.contains("0.0.0.0:16443 is not a loopback address"),
            "{err}"
        );
        assert!(check_loopback_listen("127.0.0.1:0".parse().unwrap()).is_err());
    }
}
