//! The agent link under load, all real parts: a control plane of its own,
//! the real controller, real OpenSSH sshd and N real `portplane-agent run`
//! processes, each with its own ServiceAccount token.
//!
//! 1. The controller's CPU and RSS over a window, idle (no agent) and with N
//!    agents connected and reporting every 10 s (the default), side by side.
//! 2. TokenReviews per report over that window (tokens cached).
//! 3. Agent state change -> OperatorPort status: a probe agent's "VM" (an
//!    sshd of its own) is stopped and started again; the time from the stop
//!    (or start) to the probe's entry reading Down (or Up), seen through a
//!    watch, p50/p99 over the cycles.
//!
//! Run: `scripts/bench-agents [--agents N] [--window SECONDS] [--cycles N]`.

// A benchmark program: a failed setup ends it with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use portplane_e2e::agents::{agent_token, write_token};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, scoped_config};
use portplane_e2e::sshd::Sshd;
use portplane_e2e::{free_port, procfs, workspace_bin};

const NS: &str = "benchag";
const LOAD_PORT: &str = "benchag-kube-apiserver";
const PROBE_PORT: &str = "benchag-probe";

struct Args {
    agents: usize,
    window: Duration,
    cycles: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        agents: 100,
        window: Duration::from_secs(60),
        cycles: 30,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<u64> {
            let v = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            Ok(v.parse()?)
        };
        match flag.as_str() {
            "--agents" => a.agents = usize::try_from(value()?)?,
            "--window" => a.window = Duration::from_secs(value()?),
            "--cycles" => a.cycles = usize::try_from(value()?)?,
            other => anyhow::bail!(
                "unknown argument {other:?} (--agents N, --window SECONDS, --cycles N)"
            ),
        }
    }
    Ok(a)
}

/// A real `portplane-agent run`, killed and reaped on drop.
struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(sshd: &Sshd, grpc_port: u16, name: &str, forward: &str, token: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), token);
    let d = dir.path().display();
    let config = format!(
        "name = \"{name}\"\n\
         [ssh]\nconfig = \"{}\"\nhost = \"{}\"\nsessions = 1\nkeepalive_interval = \"1s\"\nkeepalive_count_max = 3\n\
         [[forward]]\nname = \"{forward}\"\nlisten = \"127.0.0.1:{}\"\ntarget = \"127.0.0.1:{}\"\n\
         [kubeconfig]\nforward = \"{forward}\"\npath = \"{d}/kubeconfig\"\n\
         [talosconfig]\nforward = \"{forward}\"\npath = \"{d}/talosconfig\"\n\
         [controller]\nendpoint = \"http://127.0.0.1:{grpc_port}\"\ntoken_file = \"{}\"\ninventory_cache = \"{d}/inventory.json\"\n\
         [docker]\nenabled = false\n[second_owners]\nenabled = false\n",
        sshd.ssh_config_path().display(),
        sshd.host_alias(),
        free_port().unwrap(),
        sshd.port(),
        token.display(),
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(workspace_bin("portplane-agent"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env_remove("KUBECONFIG")
        .env_remove("TALOSCONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    Agent { child, _dir: dir }
}

/// CPU (ms) used and RSS (MiB, at the end; peak) of `pid` over `window`.
fn sample(pid: u32, window: Duration) -> (f64, f64, f64) {
    let cpu = procfs::cpu_ms(pid);
    std::thread::sleep(window);
    let used = procfs::cpu_ms(pid) - cpu;
    let mib = |f| procfs::status_kib(pid, f) as f64 / 1024.0;
    (used as f64, mib("VmRSS"), mib("VmHWM"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    eprintln!("bench-agents: starting a control plane");
    let plane = ControlPlane::start()?;
    let _scope = Scope::new(&plane, NS);
    let sshd = Sshd::start()?;
    let mut probe_sshd = Sshd::start()?;
    let local = |p: u16| format!("127.0.0.1:{p}");
    let config = scoped_config(
        NS,
        &format!(
            "operatorPorts:\n\
             - {{name: {LOAD_PORT}, local: '{}', target: '127.0.0.1:6443'}}\n\
             - {{name: {PROBE_PORT}, local: '{}', target: '127.0.0.1:6443'}}\n\
             agents: {{namespace: {NS}, ttlSeconds: 30}}\n",
            local(free_port()?),
            local(free_port()?)
        ),
    )
    .replace("resyncSeconds: 2\n", "resyncSeconds: 600\n");
    let controller = Controller::start(&plane, &config);
    let pid = controller.pid().expect("the controller runs");
    let metric = |name: &str| {
        controller
            .metric(name)
            .unwrap_or_else(|| panic!("the controller exports {name}"))
    };

    eprintln!(
        "bench-agents: idle controller, {}s window",
        args.window.as_secs()
    );
    let idle = tokio::task::block_in_place(|| sample(pid, args.window));

    eprintln!("bench-agents: {} ServiceAccounts and tokens", args.agents);
    let names: Vec<String> = (0..args.agents).map(|i| format!("load{i:03}")).collect();
    let tokens: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<_> = names
            .chunks(names.len().div_ceil(4).max(1))
            .map(|chunk| {
                s.spawn(|| {
                    chunk
                        .iter()
                        .map(|n| agent_token(&plane, NS, n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks
            .into_iter()
            .flat_map(|h| h.join().expect("token thread"))
            .collect()
    });
    let reports_before_start = metric("portplane_agent_reports_total");
    eprintln!("bench-agents: starting {} agents", args.agents);
    let started = Instant::now();
    let agents: Vec<Agent> = names
        .iter()
        .zip(&tokens)
        .map(|(n, t)| start_agent(&sshd, controller.grpc_port, n, LOAD_PORT, t))
        .collect();
    // Every agent reports once as soon as its link is up.
    while metric("portplane_agent_reports_total") < reports_before_start + args.agents as f64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {} agents reported within 300 s",
            metric("portplane_agent_reports_total") - reports_before_start,
            args.agents
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_linked = started.elapsed();
    // Let the start-up (token reviews, first writes) pass.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (reviews0, reports0) = (
        metric("portplane_tokenreviews_total"),
        metric("portplane_agent_reports_total"),
    );
    eprintln!(
        "bench-agents: {} agents linked in {all_linked:?}; {}s window",
        args.agents,
        args.window.as_secs()
    );
    let loaded = tokio::task::block_in_place(|| sample(pid, args.window));
    let (reviews, reports) = (
        metric("portplane_tokenreviews_total") - reviews0,
        metric("portplane_agent_reports_total") - reports0,
    );

    eprintln!("bench-agents: probe agent, {} Down/Up cycles", args.cycles);
    let probe_token = agent_token(&plane, NS, "probe");
    let _probe = start_agent(
        &probe_sshd,
        controller.grpc_port,
        "probe",
        PROBE_PORT,
        &probe_token,
    );
    let client = plane.client().await?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "portplane.dev",
        "v1alpha1",
        "OperatorPort",
    ));
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client, &resource);
    let stream = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={PROBE_PORT}")),
    )
    .applied_objects()
    .map_ok(|o| {
        o.data["status"]["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == "probe"))
            .and_then(|e| e["tunnel"].as_str().map(String::from))
    });
    let mut stream = Box::pin(stream);
    let mut wait_for = async |want: &str| -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            match next {
                Ok(Some(Ok(Some(state)))) if state == want => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => anyhow::bail!("the watch ended"),
                Err(_) => anyhow::bail!("the probe's entry did not turn {want} within 60 s"),
            }
        }
    };
    wait_for("Up").await?;
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for _ in 0..args.cycles {
        let t = Instant::now();
        probe_sshd.stop();
        wait_for("Down").await?;
        down.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        probe_sshd.restart()?;
        wait_for("Up").await?;
        up.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(agents);

    let cpu_share = |ms: f64| ms / args.window.as_secs_f64() / 10.0;
    println!(
        "\n### controller with {} agents reporting every 10 s ({}s window)\n",
        args.agents,
        args.window.as_secs()
    );
    println!(
        "| controller | CPU ms in window | CPU % of one core | RSS MiB (end) | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| idle, no agent | {:.0} | {:.2} | {:.1} | {:.1} |",
        idle.0,
        cpu_share(idle.0),
        idle.1,
        idle.2
    );
    println!(
        "| {} agents linked | {:.0} | {:.2} | {:.1} | {:.1} |",
        args.agents,
        loaded.0,
        cpu_share(loaded.0),
        loaded.1,
        loaded.2
    );
    println!(
        "\nAll {} agents linked (first report each) {:.1} s after the first was started; \
         in the window: {reports:.0} reports, {reviews:.0} TokenReviews ({:.4} per report).",
        args.agents,
        all_linked.as_secs_f64(),
        if reports > 0.0 {
            reviews / reports
        } else {
            f64::NAN
        }
    );
    println!(
        "\n### agent state change -> OperatorPort status ({} cycles)\n",
        args.cycles
    );
    println!("| change | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (label, mut samples) in [
        ("probe's sshd stopped -> entry Down", down),
        (
            "probe's sshd started -> entry Up (includes the agent's reconnect)",
            up,
        ),
    ] {
        samples.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
