//! Object names and DNS name rules.

use crate::Protocol;

/// `<namespace>.<service>.<port>`, with `-udp` / `-sctp` for those protocols
/// (DESIGN.md, "Names users type").
pub fn object_name(namespace: &str, service: &str, port: i32, protocol: Protocol) -> String {
    let suffix = match protocol {
        Protocol::Tcp => "",
        Protocol::Udp => "-udp",
        Protocol::Sctp => "-sctp",
    };
    format!("{namespace}.{service}.{port}{suffix}")
}

/// One DNS label as Tailscale requires for a hostname (RFC 1123): 1-63
/// characters, ASCII letters, digits and '-', not starting or ending with '-'.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A lowercase DNS label, as Kubernetes requires of namespace names and
/// label values such as an agent's name (RFC 1123 label).
pub fn is_lowercase_dns_label(s: &str) -> bool {
    is_dns_label(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// A lowercase DNS subdomain, as Kubernetes requires of object names: at
/// most 253 characters, dot-separated lowercase DNS labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_lowercase_dns_label)
}

/// A DNS name of one or more labels (any case), e.g. `tail1234.ts.net`.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_subdomains_and_names() {
        assert!(is_dns_label("joelclaw-redis"));
        assert!(!is_dns_label("-redis"));
        assert!(!is_dns_label("redis-"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label("a.b"));
        assert!(is_lowercase_dns_label("portplane"));
        assert!(!is_lowercase_dns_label("Portplane"));
        assert!(is_dns_subdomain("kube-apiserver"));
        assert!(!is_dns_subdomain("Kube-apiserver"));
        assert!(is_dns_name("tail1234.ts.net"));
        assert!(!is_dns_name("tail1234..ts.net"));
    }

    #[test]
    fn object_names_carry_non_tcp_protocols() {
        assert_eq!(
            object_name("joelclaw", "livekit", 7882, Protocol::Udp),
            "joelclaw.livekit.7882-udp"
        );
        assert_eq!(
            object_name("joelclaw", "redis", 6379, Protocol::Tcp),
            "joelclaw.redis.6379"
        );
    }
}
