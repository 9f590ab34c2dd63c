//! `make demo`: portplane's main job on the embedded default.
//!
//! A real control plane with two real nodes on loopback stands in for the
//! Talos cluster, a real sshd on loopback stands in for the Colima VM (with a
//! Lima-style ssh.config); the controller is installed with the real helm and
//! runs as pods, and `portplane-agent` runs as it would on a Mac. The seed's services are applied, the port
//! inventory is shown with the real kubectl, and kubectl reaches the API
//! server through the agent's tunnel. Everything started is stopped, by pid,
//! on exit.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portplane_e2e::agent_cli;
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::docker::Docker;
use portplane_e2e::helm::HelmController;
use portplane_e2e::sshd::Sshd;
use portplane_e2e::{free_port, workspace_bin};

/// The seed's runtime services (ADR-0083 and the operations reference):
/// Tailscale-exposed, NodePort-published (PDS with its asymmetric 9627 -> 3000
/// map), and three mistakes portplane catches.
const SEED_SERVICES: &str = include_str!("demo-services.yaml");

fn main() -> anyhow::Result<()> {
    let hold = std::io::stdin().is_terminal() && !std::env::args().any(|a| a == "--exit");
    let work = tempfile::Builder::new()
        .prefix("portplane-demo-")
        .tempdir()?;

    step(
        "a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with two real nodes (containerd + kubelet) on loopback",
    );
    let plane = ControlPlane::start_with_nodes(2).context("scripts/cluster up --nodes 2")?;
    println!(
        "  server {}  kubeconfig {}",
        plane.server()?,
        plane.kubeconfig().display()
    );
    show(plane.kubectl().args(["get", "nodes", "-o", "wide"]))?;

    step("helm install portplane: the controller image (make image) on the nodes, two replicas");
    // The chart grants read access to the Tailscale operator's proxy state
    // in its namespace, which exists wherever the operator runs.
    plane.kubectl_output(&["create", "namespace", "tailscale"])?;
    let kube_port = port_or_free(16443)?;
    let talos_port = port_or_free(15000)?;
    let api_port = plane.apiserver_port()?;
    // The operator ports as this demo's agent really tunnels them: the VM's
    // 10.5.0.2 is not here, so both targets are the local API server (no
    // Talos API either; see the talosconfig below).
    let controller = HelmController::install(
        &plane,
        "portplane",
        "portplane",
        &format!(
            "config:\n  tailnetDomain: tail7af24.ts.net\n  operatorPorts:\n\
             \x20 - {{name: kube-apiserver, local: '127.0.0.1:{kube_port}', target: '127.0.0.1:{api_port}'}}\n\
             \x20 - {{name: talos-api, local: '127.0.0.1:{talos_port}', target: '127.0.0.1:{api_port}'}}\n"
        ),
    )?;
    show(
        plane
            .kubectl()
            .args(["get", "pods", "-n", "portplane", "-o", "wide"]),
    )?;
    let leader = wait_for(Duration::from_secs(30), || {
        controller.leader("portplane-controller").ok().flatten()
    })
    .context("no controller pod took the lease")?;
    // Without kube-proxy here the agent dials the leader's pod directly (a
    // standby refuses reports); on a real cluster it dials the Service.
    let leader_ip = controller
        .pods()?
        .into_iter()
        .find(|p| p.name == leader)
        .map(|p| p.ip)
        .context("the leader pod has no address")?;
    println!(
        "  lease portplane-controller held by {leader}; the other pod serves agents and waits"
    );

    step("the seed's services in namespace joelclaw");
    let services = work.path().join("services.yaml");
    std::fs::write(&services, SEED_SERVICES)?;
    print!(
        "{}",
        plane.kubectl_output(&["apply", "-f", &services.to_string_lossy()])?
    );

    step("a real OpenSSH sshd on loopback, standing in for the Colima VM");
    let sshd = Sshd::start()?;
    println!(
        "  {} (host {})",
        sshd.ssh_config_path().display(),
        sshd.host_alias()
    );

    step("a real dockerd in the VM stand-in: the Talos node container with the seed's port maps");
    let docker = Docker::start()?;
    // Published on 127.0.0.3, an address of their own; nothing dials them.
    docker.talos_node(
        "joelclaw-controlplane-1",
        &[
            "127.0.0.3:9627:3000",
            "127.0.0.3:7880:7880",
            "127.0.0.3:3111:3111",
        ],
    )?;
    // Docker's record of the maps (what the agent reads over SSH).
    print!(
        "  joelclaw-controlplane-1 ports: {}",
        docker.docker(&[
            "inspect",
            "--format",
            "{{json .HostConfig.PortBindings}}",
            "joelclaw-controlplane-1",
        ])?
    );

    step("portplane-agent run: the operator tunnel over its own SSH connection");
    let kubeconfig = work.path().join("kube/config");
    std::fs::create_dir_all(kubeconfig.parent().context("kubeconfig folder")?)?;
    // The user's kubeconfig as talosctl left it: cluster "joelclaw", server
    // on the direct path. The agent rewrites it to the operator port.
    let original = std::fs::read_to_string(plane.kubeconfig())?
        .replace("portplane-local", "joelclaw")
        .replace(&plane.server()?, "https://127.0.0.1:6443");
    std::fs::write(&kubeconfig, original)?;
    let talosconfig = work.path().join("talos/config");
    std::fs::create_dir_all(talosconfig.parent().context("talosconfig folder")?)?;
    // The user's talosconfig, with talosctl's credentials: here the control
    // plane's CA and admin certificate, because there is no Talos API in this
    // demo and the talos-api forward leads to the kube-apiserver, the one TLS
    // server that `doctor` can verify them against.
    std::fs::write(
        &talosconfig,
        agent_cli::talosconfig_from_kubeconfig(plane.kubeconfig(), "joelclaw")?,
    )?;
    let agent_config = work.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "name = \"demo\"\nsocket = \"{socket}\"\n\n[ssh]\nconfig = \"{ssh_config}\"\nhost = \"{host}\"\n\n\
             [[forward]]\nname = \"kube-apiserver\"\nlisten = \"127.0.0.1:{kube_port}\"\n\
             target = \"127.0.0.1:{api_port}\"\n\n\
             [[forward]]\nname = \"talos-api\"\nlisten = \"127.0.0.1:{talos_port}\"\n\
             target = \"127.0.0.1:{talos_target}\"\n\n\
             [kubeconfig]\npath = \"{kubeconfig}\"\ncluster = \"joelclaw\"\n\n\
             [talosconfig]\npath = \"{talosconfig}\"\ncontext = \"joelclaw\"\n\n\
             [controller]\nendpoint = \"https://{leader_ip}:{grpc_port}\"\n\
             tls_server_name = \"localhost\"\nnamespace = \"portplane\"\n\
             token_file = \"{work}/agent-token\"\nca_file = \"{work}/controller-ca.crt\"\n\
             inventory_cache = \"{work}/inventory.json\"\n\n\
             [docker]\ncommand = \"docker -H {docker_host}\"\ninterval = \"2s\"\n\n\
             [second_owners]\ninterval = \"2s\"\n",
            ssh_config = sshd.ssh_config_path().display(),
            host = sshd.host_alias(),
            // No Talos API here: see the talosconfig above.
            talos_target = api_port,
            // A folder the agent makes itself, 0700, as it does under ~/.local/state.
            socket = work.path().join("state/agent.sock").display(),
            kubeconfig = kubeconfig.display(),
            talosconfig = talosconfig.display(),
            grpc_port = controller.grpc_port,
            work = work.path().display(),
            docker_host = docker.host(),
        ),
    )?;
    let agent = Agent::start(&agent_config, &work.path().join("agent.log"))?;
    let rewritten = |path: &Path, port: u16| {
        std::fs::read_to_string(path).is_ok_and(|text| text.contains(&format!("127.0.0.1:{port}")))
    };
    wait_until(Duration::from_secs(20), || {
        rewritten(&kubeconfig, kube_port) && rewritten(&talosconfig, talos_port)
    })
    .with_context(|| {
        format!(
            "the agent did not rewrite kubeconfig and talosconfig; its log:\n{}",
            agent.log()
        )
    })?;
    println!(
        "  listening on 127.0.0.1:{kube_port} (kube-apiserver) and 127.0.0.1:{talos_port} (talos-api)"
    );

    step("kubectl through the tunnel, with the rewritten kubeconfig (TLS verified)");
    show(
        Command::new(plane.bindir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "namespaces"]),
    )?;
    println!("\n  kubeconfig server now: {}", server_line(&kubeconfig));
    // The credentials (ca, crt, key) are left out of the printout.
    let talos_text = std::fs::read_to_string(&talosconfig)?;
    let shown: String = talos_text
        .lines()
        .filter(|l| {
            !["ca:", "crt:", "key:"]
                .iter()
                .any(|k| l.trim_start().starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    println!("  talosconfig (credentials left out):\n{}", indent(&shown));

    step(
        "portplane-agent enroll: the host's ServiceAccount token and the controller's CA, through the tunnel",
    );
    let enroll = Command::new(workspace_bin("portplane-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(&agent_config)
        .output()?;
    print!("{}", String::from_utf8_lossy(&enroll.stdout));
    anyhow::ensure!(
        enroll.status.success(),
        "portplane-agent enroll failed: {}",
        String::from_utf8_lossy(&enroll.stderr)
    );
    // The running agent picks the token up when it next connects.
    wait_until(Duration::from_secs(60), || {
        plane
            .kubectl_output(&[
                "get",
                "operatorport",
                "kube-apiserver",
                "-o",
                "jsonpath={.status.agents[0].name}={.status.agents[0].tunnel}",
            ])
            .is_ok_and(|o| o == "demo=Up")
    })
    .with_context(|| {
        format!(
            "the agent never reported its tunnel Up; its log:\n{}",
            agent.log()
        )
    })?;
    println!("  the agent reports over TLS as ServiceAccount portplane/portplane-agent-demo");

    step("the live port inventory: kubectl get operatorports");
    wait_until(Duration::from_secs(20), || {
        plane
            .kubectl_output(&["get", "operatorports", "-o", "name"])
            .is_ok_and(|o| o.contains("joelclaw.redis.6379"))
    })
    .context("the controller did not publish the seed's inventory")?;
    // The PDS's host endpoint comes from Docker's map, read by the agent.
    wait_until(Duration::from_secs(30), || {
        plane
            .kubectl_output(&[
                "get",
                "operatorport",
                "joelclaw.bluesky-pds.3000",
                "-o",
                "jsonpath={.spec.endpoint}",
            ])
            .is_ok_and(|o| o == "127.0.0.1:9627")
    })
    .with_context(|| {
        format!(
            "the PDS never got its host endpoint; agent log:\n{}",
            agent.log()
        )
    })?;
    show(plane.kubectl().args(["get", "operatorports", "-o", "wide"]))?;

    step("what portplane flags (conditions on the OperatorPorts, Events on the Services)");
    show(plane.kubectl().args([
        "get",
        "events",
        "-n",
        "joelclaw",
        "--field-selector",
        "type=Warning",
        "-o",
        "custom-columns=SERVICE:.involvedObject.name,REASON:.reason,MESSAGE:.message",
    ]))?;

    step("portplane-agent status and doctor: how the host sees its tunnel");
    let healthy = agent_cli::print_status_and_doctor(&agent_config)
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
    anyhow::ensure!(
        healthy,
        "portplane-agent doctor found a problem (above); agent log:\n{}",
        agent.log()
    );

    if hold {
        step(&format!(
            "running; try: kubectl --kubeconfig {} get operatorports -o wide   (Ctrl-C stops everything)",
            plane.kubeconfig().display()
        ));
        wait_for_ctrl_c();
    }
    step("stopping everything this demo started");
    drop(agent);
    drop(docker);
    drop(sshd);
    drop(controller);
    drop(plane);
    Ok(())
}

/// `portplane-agent run`, killed and reaped on drop.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> anyhow::Result<Agent> {
        let child = Command::new(workspace_bin("portplane-agent"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting portplane-agent")?;
        Ok(Agent {
            child,
            log: log.to_path_buf(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator port itself when it is free here, else any free port.
fn port_or_free(port: u16) -> std::io::Result<u16> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(port),
        Err(_) => free_port(),
    }
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?}")
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    wait_for(timeout, || ok().then_some(()))
}

fn server_line(kubeconfig: &Path) -> String {
    std::fs::read_to_string(kubeconfig)
        .unwrap_or_default()
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
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
