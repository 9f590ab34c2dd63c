//! The user-level figure: `GET /version` from a real Kubernetes client
//! (kube-rs, as the controller and any Rust tool use it; kubectl's Go client
//! does the same TLS + HTTP/2 exchange) to a real kube-apiserver, through a
//! tunnel's loopback port. Both tunnels are measured in turns, one request
//! each (`turns` in main.rs).

use std::time::Instant;

use anyhow::Context;

/// A kube-rs config for the admin identity of `kubeconfig`, aimed at
/// `https://127.0.0.1:<port>` (the tunnel) instead of the API server.
pub async fn config_through(
    kubeconfig: &std::path::Path,
    port: u16,
) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.cluster_url = format!("https://127.0.0.1:{port}")
        .parse()
        .context("tunnel URL")?;
    Ok(config)
}

/// `requests` sequential GET /version per config, each over that config's
/// one kept-alive connection (opened by a request that is not counted), in
/// milliseconds each.
pub async fn keep_alive(
    configs: &[kube::Config; 2],
    requests: usize,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let clients = [
        kube::Client::try_from(configs[0].clone())?,
        kube::Client::try_from(configs[1].clone())?,
    ];
    for client in &clients {
        client
            .apiserver_version()
            .await
            .context("first GET /version")?;
    }
    let mut ms = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    for k in 0..requests {
        for i in crate::turns(k) {
            let t = Instant::now();
            clients[i].apiserver_version().await?;
            ms[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(ms)
}

/// `requests` GET /version per config, each from a new client and so over a
/// new connection (TCP connect, TLS handshake, HTTP/2 set-up, request), in
/// milliseconds each. The client is built before the clock starts (it
/// connects lazily, on the request).
pub async fn new_connections(
    configs: &[kube::Config; 2],
    requests: usize,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let mut ms = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    for k in 0..requests {
        for i in crate::turns(k) {
            let client = kube::Client::try_from(configs[i].clone())?;
            let t = Instant::now();
            client.apiserver_version().await?;
            ms[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(ms)
}
