//! `make demo`: portplane's main job on the embedded default.
//!
//! A real control plane on loopback stands in for the Talos cluster, a real
//! sshd on loopback stands in for the Colima VM (with a Lima-style
//! ssh.config), and the controller and agent run against them exactly as
//! they would on a Mac. Everything it starts is stopped, by pid, on exit.

use std::io::IsTerminal;
use std::process::Command;

use anyhow::Context;
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::sshd::Sshd;

fn main() -> anyhow::Result<()> {
    let hold = std::io::stdin().is_terminal() && !std::env::args().any(|a| a == "--exit");

    step(
        "starting a real control plane (etcd + kube-apiserver + kube-controller-manager) on loopback",
    );
    let plane = ControlPlane::start().context("scripts/cluster up")?;
    println!("  kubeconfig: {}", plane.kubeconfig().display());
    println!("  server:     {}", plane.server()?);
    show(plane.kubectl().args(["version", "-o", "yaml"]))?;

    step("starting a real OpenSSH sshd on loopback, standing in for the Colima VM");
    let sshd = Sshd::start()?;
    println!(
        "  ssh.config: {} (host {})",
        sshd.ssh_config_path().display(),
        sshd.host_alias()
    );
    show(
        Command::new("ssh")
            .arg("-F")
            .arg(sshd.ssh_config_path())
            .args([
                "-o",
                "ControlMaster=no",
                &sshd.host_alias(),
                "echo",
                "sshd: reachable as",
                "$(id -un)",
            ]),
    )?;

    step(
        "next, once they are built: portplane-controller publishes OperatorPorts, portplane-agent holds 127.0.0.1:16443 over the sshd",
    );

    if hold {
        step("running; press Ctrl-C to stop everything");
        wait_for_ctrl_c();
    }
    step("stopping everything this demo started");
    drop(sshd);
    drop(plane);
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn show(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn wait_for_ctrl_c() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
}
