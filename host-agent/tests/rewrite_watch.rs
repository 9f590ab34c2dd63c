//! `keep_rewritten` (what `run` spawns): never fatal, rewrites when a file
//! appears or is rewritten by talosctl, and does not loop on its own writes.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use portplane_agent::config::AgentConfig;
use portplane_agent::rewrite::{Env, keep_rewritten_with};

mod fixtures_support;
use fixtures_support::fixture;

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_on_appearance_and_on_talosctl_writes_without_looping() {
    let dir = tempfile::tempdir().unwrap();
    let kube = dir.path().join("kubeconfig");
    let talos = dir.path().join("talosconfig");
    let config = AgentConfig::parse(
        &dir.path().join("agent.toml"),
        &format!(
            "[kubeconfig]\npath = \"{}\"\n[talosconfig]\npath = \"{}\"\n",
            kube.display(),
            talos.display()
        ),
    )
    .unwrap();
    // Both files missing, then one malformed: reported, never fatal.
    let task = tokio::spawn(keep_rewritten_with(config.rewrite_plan(), Env::default()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fs::write(&kube, "clusters: [\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!task.is_finished());
    assert_eq!(
        fs::read_to_string(&kube).unwrap(),
        "clusters: [\n",
        "malformed file untouched"
    );

    fs::write(&kube, fixture("kubeconfig.two-generations.yaml")).unwrap();
    fs::write(&talos, fixture("talosconfig.two-generations.yaml")).unwrap();
    let rewritten_kube = fixture("kubeconfig.two-generations.rewritten.yaml");
    let rewritten_talos = fixture("talosconfig.two-generations.rewritten.yaml");
    wait_for("both rewrites", Duration::from_secs(10), || {
        fs::read_to_string(&kube).unwrap() == rewritten_kube
            && fs::read_to_string(&talos).unwrap() == rewritten_talos
    })
    .await;

    // talosctl merges a re-created cluster back in with its own endpoint.
    let recreated = rewritten_talos.replace("    homelab:", "    joelclaw-2:\n        endpoints:\n            - 127.0.0.1:61000\n        nodes:\n            - 10.5.0.2\n    homelab:");
    fs::write(&talos, &recreated).unwrap();
    wait_for(
        "the new generation rewritten",
        Duration::from_secs(10),
        || {
            fs::read_to_string(&talos)
                .unwrap()
                .contains("    joelclaw-2:\n        endpoints:\n            - 127.0.0.1:15000\n")
        },
    )
    .await;

    // Settled: no further writes (our own write is not a reason to write).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (k, t) = (mtime(&kube), mtime(&talos));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((mtime(&kube), mtime(&talos)), (k, t), "no rewrite loop");
    assert!(!task.is_finished());
    task.abort();
}

/// The README says: remove a stale `<file>.lock` and the agent goes on. It
/// did not: the failed rewrite was recorded as handled and nothing happened
/// until the file changed again. Now it is retried with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_that_failed_on_a_stale_lock_is_retried_once_the_lock_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let kube = dir.path().join("kubeconfig");
    let lock = dir.path().join("kubeconfig.lock");
    fs::write(&kube, fixture("kubeconfig.two-generations.yaml")).unwrap();
    fs::write(&lock, "").unwrap();
    let config = AgentConfig::parse(
        &dir.path().join("agent.toml"),
        &format!(
            "[kubeconfig]\npath = \"{}\"\n[talosconfig]\npath = \"{}\"\n",
            kube.display(),
            dir.path().join("talosconfig").display()
        ),
    )
    .unwrap();
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .try_init()
        .unwrap();
    let task = tokio::spawn(keep_rewritten_with(config.rewrite_plan(), Env::default()));
    // The first attempt waits LOCK_TIMEOUT (5 s) for the lock, then fails.
    wait_for("the lock failure", Duration::from_secs(30), || {
        logs.text().contains("still held after")
    })
    .await;
    assert_eq!(
        fs::read_to_string(&kube).unwrap(),
        fixture("kubeconfig.two-generations.yaml"),
        "written despite the lock"
    );
    fs::remove_file(&lock).unwrap();
    let rewritten = fixture("kubeconfig.two-generations.rewritten.yaml");
    wait_for("the retried rewrite", Duration::from_secs(20), || {
        fs::read_to_string(&kube).unwrap() == rewritten
    })
    .await;
    task.abort();
}

/// The agent's log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}
