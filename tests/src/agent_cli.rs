//! The agent's service-facing commands for the demo and the tests:
//! `portplane-agent status` and `doctor`, and a talosconfig built from the
//! local control plane's credentials (so the Talos API check has a real TLS
//! server to verify: the kube-apiserver, same CA, admin client certificate).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::workspace_bin;

/// A talosctl-style talosconfig with one context, `context`, whose `ca`,
/// `crt` and `key` are the scripts/cluster kubeconfig's CA and client
/// certificate (base64 PEM, as talosctl writes them).
pub fn talosconfig_from_kubeconfig(kubeconfig: &Path, context: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let value = |key: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{key}: "))
                    .map(str::to_string)
            })
            .with_context(|| format!("{}: no {key}", kubeconfig.display()))
    };
    Ok(format!(
        "context: {context}\ncontexts:\n  {context}:\n    endpoints:\n      - 10.5.0.2\n    nodes:\n      - 10.5.0.2\n    ca: {}\n    crt: {}\n    key: {}\n",
        value("certificate-authority-data")?,
        value("client-certificate-data")?,
        value("client-key-data")?,
    ))
}

/// Print `portplane-agent status` and `portplane-agent doctor --config
/// <config>` (as a user would see them); `Ok(true)` when doctor passed.
/// Fails when status finds no agent.
pub fn print_status_and_doctor(config: &Path) -> anyhow::Result<bool> {
    let agent = workspace_bin("portplane-agent");
    let status = Command::new(&agent)
        .arg("status")
        .arg("--config")
        .arg(config)
        .output()?;
    println!("$ portplane-agent status");
    print!("{}", String::from_utf8_lossy(&status.stdout));
    if !status.status.success() {
        bail!(
            "portplane-agent status: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let doctor = Command::new(&agent)
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .output()?;
    println!("\n$ portplane-agent doctor --config {}", config.display());
    print!("{}", String::from_utf8_lossy(&doctor.stdout));
    eprint!("{}", String::from_utf8_lossy(&doctor.stderr));
    Ok(doctor.status.success())
}
