//! Controller benchmark against a real control plane (its own, started here):
//!
//! 1. latency: `kubectl annotate` -> OperatorPort visible (and Ready), p50/p99
//!    over 100 changes;
//! 2. converge: 100 / 1,000 / 10,000 annotated Services -> time from
//!    controller start to every OperatorPort Ready, and the controller's peak
//!    RSS;
//! 3. resync with nothing changed: OperatorPort writes (must be 0).
//!
//! Run: `scripts/bench-controller [SIZES...]` (default 100 1000 10000).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, install_crd};
use portplane_e2e::procfs;

const NS: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        sizes
    };

    eprintln!("bench: starting a control plane");
    let plane = ControlPlane::start()?;
    install_crd(&plane);
    let client = plane.client().await?;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(NS, None, false),
                ..Default::default()
            },
        )
        .await?;

    let latency = latency(&plane, &client).await?;
    let mut rows = Vec::new();
    let mut created = 0;
    let mut sets: Vec<String> = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let set = format!("s{i}");
        eprintln!("bench: creating {} Services (set {set})", n - created);
        let t = Instant::now();
        create_services(&client, created, n, &set, true).await?;
        eprintln!("bench: created in {:.1}s", t.elapsed().as_secs_f64());
        created = n;
        sets.push(set);
        let last = i + 1 == sizes.len();
        rows.push(converge(&plane, &client, n, &sets, !last).await?);
    }

    println!(
        "\n### latency: kubectl annotate -> OperatorPort (100 changes, 100 Services watched)\n"
    );
    println!("| measure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (label, samples) in &latency {
        let (p50, p99, max) = percentiles(samples);
        println!("| {label} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
    }
    println!("\n### converge from cold start, peak RSS, resync writes\n");
    println!(
        "| annotated Services | controller start -> all OperatorPorts Ready | peak RSS (VmHWM) | writes during 2 resyncs with nothing changed |"
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2} s | {:.1} MiB | {} |",
            r.n,
            r.converge.as_secs_f64(),
            r.rss_kib as f64 / 1024.0,
            r.resync_writes
        );
    }
    Ok(())
}

fn meta(name: &str, namespace: Option<&str>, annotate: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        annotations: annotate
            .then(|| BTreeMap::from([("tailscale.com/expose".to_string(), "true".to_string())])),
        ..Default::default()
    }
}

async fn create_services(
    client: &Client,
    from: usize,
    to: usize,
    set: &str,
    annotate: bool,
) -> anyhow::Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                let mut m = meta(&format!("{set}-svc-{i:05}"), Some(NS), annotate);
                m.labels = Some(BTreeMap::from([("bench-set".to_string(), set.to_string())]));
                let svc = Service {
                    metadata: m,
                    spec: Some(ServiceSpec {
                        ports: Some(vec![ServicePort {
                            port: 8080,
                            ..Default::default()
                        }]),
                        selector: Some(BTreeMap::from([("app".to_string(), format!("svc-{i}"))])),
                        cluster_ip: Some(cluster_ip(set, i)),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &svc).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A fixed ClusterIP per Service: the API server's dynamic allocator scans
/// every allocated IPAddress on each create (O(n) per Service), which made
/// creating 10,000 Services take minutes; the controller's work is the same.
/// The converge sets number their Services on from each other; the latency
/// set starts again at 0, so it gets its own /16.
fn cluster_ip(set: &str, i: usize) -> String {
    let block = if set == "lat" { 101 } else { 100 };
    format!("10.{block}.{}.{}", i / 250, i % 250 + 1)
}

fn oport_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("portplane.dev", "v1alpha1", "OperatorPort"),
        "operatorports",
    );
    Api::all_with(client.clone(), &ar)
}

fn is_ready(o: &DynamicObject) -> bool {
    o.data["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// OperatorPort name -> (first seen, first Ready).
type Seen = Arc<Mutex<HashMap<String, (Instant, Option<Instant>)>>>;

/// Watch an instance's OperatorPorts: name -> (first seen, first Ready).
fn watch_oports(client: &Client, instance: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let api = oport_api(client);
    let cfg = watcher::Config::default().labels(&format!("portplane.dev/instance={instance}"));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(api, cfg).default_backoff().applied_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(o)) = stream.next().await {
            let now = Instant::now();
            let Some(name) = o.metadata.name.clone() else {
                continue;
            };
            let ready = is_ready(&o);
            if let Ok(mut m) = s.lock() {
                let e = m.entry(name).or_insert((now, None));
                if ready && e.1.is_none() {
                    e.1 = Some(now);
                }
            }
        }
    });
    (seen, task)
}

fn config(instance: &str, selector: &str) -> String {
    format!(
        "instance: {instance}\nserviceSelector: '{selector}'\noperatorPorts: []\noperatorNamespace: ts-bench\nresyncSeconds: 3\nlease: {{name: bench-{instance}, namespace: default}}\n"
    )
}

type Samples = Vec<(&'static str, Vec<f64>)>;

async fn latency(plane: &ControlPlane, client: &Client) -> anyhow::Result<Samples> {
    const CHANGES: usize = 100;
    create_services(client, 0, CHANGES, "lat", false).await?;
    let mut controller = Controller::start(plane, &config("lat", "bench-set=lat"));
    let (seen, task) = watch_oports(client, "lat");
    let mut from_return = Vec::new();
    let mut from_start = Vec::new();
    let mut ready = Vec::new();
    for i in 0..CHANGES {
        let name = format!("lat-svc-{i:05}");
        let t0 = Instant::now();
        let out = plane
            .kubectl()
            .args([
                "annotate",
                "service",
                &name,
                "-n",
                NS,
                "tailscale.com/expose=true",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl annotate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t1 = Instant::now();
        let object = format!("{NS}.{name}.8080");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (visible, became_ready) = loop {
            let entry = seen.lock().ok().and_then(|m| m.get(&object).copied());
            if let Some((v, Some(r))) = entry {
                break (v, r);
            }
            anyhow::ensure!(Instant::now() < deadline, "{object} did not appear");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        from_return.push(visible.saturating_duration_since(t1).as_secs_f64() * 1e3);
        from_start.push(visible.saturating_duration_since(t0).as_secs_f64() * 1e3);
        ready.push(became_ready.saturating_duration_since(t1).as_secs_f64() * 1e3);
    }
    task.abort();
    controller.terminate();
    Ok(vec![
        (
            "annotate returned -> OperatorPort visible (watch event)",
            from_return,
        ),
        (
            "annotate returned -> OperatorPort Ready (status written)",
            ready,
        ),
        (
            "kubectl annotate started -> OperatorPort visible (includes kubectl's own ~start-up)",
            from_start,
        ),
    ])
}

struct Row {
    n: usize,
    converge: Duration,
    rss_kib: u64,
    resync_writes: u64,
}

async fn converge(
    plane: &ControlPlane,
    client: &Client,
    n: usize,
    sets: &[String],
    clean_up: bool,
) -> anyhow::Result<Row> {
    let instance = format!("n{n}");
    let (seen, task) = watch_oports(client, &instance);
    let selector = format!("bench-set in ({})", sets.join(","));
    let t0 = Instant::now();
    let mut controller = Controller::start(plane, &config(&instance, &selector));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = seen
            .lock()
            .map(|m| m.values().filter(|(_, r)| r.is_some()).count())
            .unwrap_or(0);
        if ready >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready}/{n} Ready after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converge = seen
        .lock()
        .ok()
        .and_then(|m| m.values().filter_map(|(_, r)| *r).max())
        .map_or(t0.elapsed(), |last| last.saturating_duration_since(t0));
    let (first_seen, last_seen) = seen
        .lock()
        .ok()
        .map(|m| {
            let at = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
            let first = m.values().map(|(s, _)| *s).min().map_or(0.0, at);
            let last = m.values().map(|(s, _)| *s).max().map_or(0.0, at);
            (first, last)
        })
        .unwrap_or_default();
    eprintln!(
        "bench: {n}: first OperatorPort at {first_seen:.2}s, last created at {last_seen:.2}s"
    );
    task.abort();

    // Let in-flight writes settle, then count writes across two full resyncs.
    let mut before = controller.writes();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = controller.writes();
        if now == before {
            break;
        }
        before = now;
    }
    let reconciles = controller
        .metric("portplane_reconciles_total")
        .unwrap_or(0.0);
    while controller
        .metric("portplane_reconciles_total")
        .unwrap_or(0.0)
        < reconciles + 2.0
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resync_writes = controller.writes() - before;
    let rss_kib = controller
        .pid()
        .map_or(0, |pid| procfs::status_kib(pid, "VmHWM"));
    eprintln!(
        "bench: {n}: converged in {:.2}s, rss {rss_kib} KiB, resync writes {resync_writes}",
        converge.as_secs_f64()
    );
    controller.terminate();

    if !clean_up {
        return Ok(Row {
            n,
            converge,
            rss_kib,
            resync_writes,
        });
    }
    // Leave the cluster empty of OperatorPorts for the next size.
    let api = oport_api(client);
    let lp = ListParams::default().labels(&format!("portplane.dev/instance={instance}"));
    api.delete_collection(&DeleteParams::default(), &lp).await?;
    while !api.list(&lp.clone().limit(1)).await?.items.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Row {
        n,
        converge,
        rss_kib,
        resync_writes,
    })
}

fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        s.get(((s.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    (at(0.50), at(0.99), s.last().copied().unwrap_or(0.0))
}
