//! Transport protocols, as Kubernetes spells them (`TCP`, `UDP`, `SCTP`).
//!
//! Ownership is per protocol: a UDP-only runtime port (LiveKit's 7882/UDP)
//! and a TCP forward on the same number do not collide.

use serde::{Deserialize, Serialize};

/// A Service port's protocol (Kubernetes `ServicePort.protocol`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    /// Kubernetes' default when a Service port names none.
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// A protocol name that is none of `TCP`, `UDP`, `SCTP`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a protocol TCP, UDP or SCTP, got {0:?}")]
pub struct UnknownProtocol(pub String);

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// A protocol as a Service, Docker or the wire writes it: any case, and
    /// empty (proto3's default, a field an older peer did not send) is TCP,
    /// Kubernetes' own default.
    pub fn parse(s: &str) -> Result<Protocol, UnknownProtocol> {
        match s.trim().to_ascii_uppercase().as_str() {
            "" | "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(UnknownProtocol(s.to_string())),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::parse(s)
    }
}

impl TryFrom<String> for Protocol {
    type Error = UnknownProtocol;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Protocol::parse(&s)
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> String {
        p.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_spellings_any_case_and_empty_is_tcp() {
        assert_eq!(Protocol::parse("UDP"), Ok(Protocol::Udp));
        assert_eq!(Protocol::parse("sctp"), Ok(Protocol::Sctp));
        assert_eq!(Protocol::parse(""), Ok(Protocol::Tcp));
        assert_eq!(
            Protocol::parse("QUIC").unwrap_err().to_string(),
            "expected a protocol TCP, UDP or SCTP, got \"QUIC\""
        );
        assert_eq!(Protocol::Udp.to_string(), "UDP");
    }
}
