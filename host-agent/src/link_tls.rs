//! How the agent dials the controller: `https://` is TLS (rustls), verified
//! against `[controller] ca_file` when that file exists (`enroll` writes the
//! chart's CA there) or else the system roots, and against the endpoint's
//! name (or `tls_server_name`). `http://` is plaintext and allowed only to a
//! loopback host (tests, `kubectl port-forward`) unless `insecure = true`,
//! because the bearer token would otherwise cross the network in the clear.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::config::ControllerSection;

/// Why an endpoint cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("[controller] endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("[controller] ca_file {path}: {message}")]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Whether `host` (from a URI: brackets allowed) is a loopback name.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The scheme and host of `endpoint`, checked against the plaintext rule.
/// Pure: used when the config is loaded and again before each connect.
pub fn check_endpoint(endpoint: &str, insecure: bool) -> Result<(bool, String), String> {
    let uri: tonic::codegen::http::Uri = endpoint.parse().map_err(|e| {
        format!("expected a URL such as https://portplane.example.ts.net:50051 ({e})")
    })?;
    let host = uri
        .host()
        .ok_or_else(|| "expected a URL with a host, such as https://host:50051".to_string())?
        .to_string();
    match uri.scheme_str() {
        Some("https") => Ok((true, host)),
        Some("http") if insecure || is_loopback_host(&host) => Ok((false, host)),
        Some("http") => Err(format!(
            "plaintext to {host}, which is not a loopback address, would send the agent's \
             token in the clear; use https:// (the chart serves TLS) or set insecure = true"
        )),
        _ => Err("expected an https:// (or, to loopback, http://) URL".into()),
    }
}

/// The endpoint to connect to, TLS configured.
pub fn endpoint(controller: &ControllerSection) -> Result<Endpoint, LinkError> {
    let bad = |m: String| LinkError::Endpoint(controller.endpoint.clone(), m);
    let (tls, host) = check_endpoint(&controller.endpoint, controller.insecure).map_err(bad)?;
    let endpoint =
        Endpoint::from_shared(controller.endpoint.clone()).map_err(|e| bad(e.to_string()))?;
    if !tls {
        return Ok(endpoint);
    }
    let name = controller.tls_server_name.clone().unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let mut config = ClientTlsConfig::new().domain_name(name);
    config = match controller.ca_file.as_deref().filter(|p| p.exists()) {
        Some(path) => config.ca_certificate(read_ca(path)?),
        None => config.with_native_roots(),
    };
    endpoint.tls_config(config).map_err(|e| bad(e.to_string()))
}

fn read_ca(path: &Path) -> Result<Certificate, LinkError> {
    let pem = std::fs::read(path).map_err(|e| LinkError::Ca {
        path: path.into(),
        message: format!("cannot read: {e}"),
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(LinkError::Ca {
            path: path.into(),
            message: "expected a PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(Certificate::from_pem(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback_unless_insecure() {
        assert_eq!(
            check_endpoint("http://127.0.0.1:50051", false),
            Ok((false, "127.0.0.1".into()))
        );
        assert!(check_endpoint("http://localhost:50051", false).is_ok());
        assert!(check_endpoint("http://[::1]:50051", false).is_ok());
        let err = check_endpoint("http://portplane.example.ts.net:50051", false).unwrap_err();
        assert!(
            err.contains("in the clear") && err.contains("insecure = true"),
            "{err}"
        );
        assert!(check_endpoint("http://portplane.example.ts.net:50051", true).is_ok());
        assert_eq!(
            check_endpoint("https://portplane.example.ts.net:50051", false),
            Ok((true, "portplane.example.ts.net".into()))
        );
        assert!(check_endpoint("ftp://x:1", true).is_err());
        assert!(check_endpoint("not a url", true).is_err());
    }
}
