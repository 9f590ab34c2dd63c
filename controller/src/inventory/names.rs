//! Object names and DNS name rules.

/// `<namespace>.<service>.<port>`, with `-udp` / `-sctp` for those protocols.
pub fn object_name(namespace: &str, service: &str, port: i32, protocol: &str) -> String {
    let suffix = match protocol {
        "UDP" => "-udp",
        "SCTP" => "-sctp",
        _ => "",
    };
    format!("{namespace}.{service}.{port}{suffix}")
}

/// One DNS label as Tailscale requires for a hostname: 1-63 characters,
/// ASCII letters, digits and '-', not starting or ending with '-'.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A lowercase DNS subdomain (Kubernetes object names).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.')
            .all(|l| is_dns_label(l) && !l.bytes().any(|b| b.is_ascii_uppercase()))
}
