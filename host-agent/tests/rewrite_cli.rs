//! `portplane-agent rewrite` as a user runs it: realistic files in a temp
//! home, the real binary, the file system as the judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portplane-agent");
const PAUSE: &str = "PORTPLANE_TEST_PAUSE_BEFORE_RENAME";

mod fixtures_support;
use fixtures_support::fixture;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A home with the two-generation kubeconfig and talosconfig (0600, as
    /// talosctl writes them) and an agent config pointing at them.
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let home = Home { dir };
        fs::create_dir_all(home.kube().parent().unwrap()).unwrap();
        fs::create_dir_all(home.talos().parent().unwrap()).unwrap();
        fs::write(home.kube(), fixture("kubeconfig.two-generations.yaml")).unwrap();
        fs::write(home.talos(), fixture("talosconfig.two-generations.yaml")).unwrap();
        for f in [home.kube(), home.talos()] {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(
            home.agent_config(),
            format!(
                "[kubeconfig]\npath = \"{}\"\n[talosconfig]\npath = \"{}\"\n",
                home.kube().display(),
                home.talos().display()
            ),
        )
        .unwrap();
        home
    }

    fn kube(&self) -> PathBuf {
        self.dir.path().join(".kube/config")
    }

    fn talos(&self) -> PathBuf {
        self.dir.path().join(".talos/config")
    }

    fn agent_config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("rewrite")
            .arg("--config")
            .arg(self.agent_config())
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .env_remove("TALOSCONFIG")
            .env_remove(PAUSE);
        cmd
    }

    fn rewrite(&self) -> Output {
        self.command().output().unwrap()
    }

    /// Every file in the config directories, to spot leftovers.
    fn listing(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mtime(path: &Path) -> std::time::SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn rewrites_both_files_keeps_mode_and_one_backup_and_second_run_changes_nothing() {
    let home = Home::new();
    let out = home.rewrite();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        fs::read_to_string(home.kube()).unwrap(),
        fixture("kubeconfig.two-generations.rewritten.yaml")
    );
    assert_eq!(
        fs::read_to_string(home.talos()).unwrap(),
        fixture("talosconfig.two-generations.rewritten.yaml")
    );
    for f in [home.kube(), home.talos()] {
        assert_eq!(
            fs::metadata(&f).unwrap().mode() & 0o7777,
            0o600,
            "{}",
            f.display()
        );
    }
    assert_eq!(
        fs::read_to_string(home.dir.path().join(".kube/config.portplane.bak")).unwrap(),
        fixture("kubeconfig.two-generations.yaml")
    );
    assert_eq!(home.listing(".kube"), ["config", "config.portplane.bak"]);
    assert_eq!(home.listing(".talos"), ["config", "config.portplane.bak"]);
    let text = stdout(&out);
    assert!(
        text.contains(
            "cluster \"joelclaw-1\": server https://127.0.0.1:64213 -> https://127.0.0.1:16443"
        ),
        "{text}"
    );
    assert!(text.contains("context \"joelclaw-1\""), "{text}");

    let (kube_mtime, talos_mtime) = (mtime(&home.kube()), mtime(&home.talos()));
    let kube_bytes = fs::read(home.kube()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let again = home.rewrite();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).matches("not written").count() == 2,
        "{}",
        stdout(&again)
    );
    assert_eq!(fs::read(home.kube()).unwrap(), kube_bytes);
    assert_eq!(mtime(&home.kube()), kube_mtime);
    assert_eq!(mtime(&home.talos()), talos_mtime);
}

#[test]
fn malformed_file_exits_non_zero_naming_file_and_line_and_is_untouched() {
    let home = Home::new();
    let broken = fixture("kubeconfig.two-generations.yaml")
        .replace("  name: joelclaw-1\n", "  name: [joelclaw-1\n");
    fs::write(home.kube(), &broken).unwrap();
    let before = mtime(&home.kube());
    let out = home.rewrite();
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = broken
        .lines()
        .position(|l| l.contains("[joelclaw-1"))
        .unwrap()
        + 1;
    let named = format!("{}:", home.kube().display());
    assert!(err.contains(&named), "names the file: {err}");
    let reported: usize = err
        .split(&named)
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (line..=line + 2).contains(&reported),
        "line {reported}, broken at {line}: {err}"
    );
    assert!(err.contains("left untouched"), "{err}");
    assert_eq!(fs::read_to_string(home.kube()).unwrap(), broken);
    assert_eq!(mtime(&home.kube()), before);
    assert_eq!(
        home.listing(".kube"),
        ["config"],
        "no backup, lock or temp file"
    );
    // The other file is still rewritten.
    assert_eq!(
        fs::read_to_string(home.talos()).unwrap(),
        fixture("talosconfig.two-generations.rewritten.yaml")
    );
}

#[test]
fn missing_file_exits_non_zero_naming_it() {
    let home = Home::new();
    fs::remove_file(home.talos()).unwrap();
    let out = home.rewrite();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{}: does not exist", home.talos().display())),
        "{}",
        stderr(&out)
    );
}

/// Run `rewrite` with the pause hook; returns once the temp file is
/// complete and the process waits before its rename.
fn paused(home: &Home, marker: &Path) -> ChildGuard {
    let child = home
        .command()
        .env(PAUSE, marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    guard
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_between_write_and_rename_leaves_the_old_file_whole() {
    let home = Home::new();
    let marker = home.dir.path().join("paused");
    let mut child = paused(&home, &marker);
    // The temp file is fully written and fsynced beside the config.
    let temps: Vec<String> = home
        .listing(".kube")
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(temps.len(), 1, "{:?}", home.listing(".kube"));
    let temp = fs::read_to_string(home.dir.path().join(".kube").join(&temps[0])).unwrap();
    assert_eq!(temp, fixture("kubeconfig.two-generations.rewritten.yaml"));
    child.0.kill().unwrap(); // SIGKILL, by pid
    child.0.wait().unwrap();
    assert_eq!(
        fs::read_to_string(home.kube()).unwrap(),
        fixture("kubeconfig.two-generations.yaml")
    );
    // kubectl's lock is left behind by the killed writer, as kubectl's own
    // would be: the next run waits for it, then reports it.
    let lock = home.dir.path().join(".kube/config.lock");
    assert!(lock.exists());
    let out = home.rewrite();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("config.lock: still held"),
        "{}",
        stderr(&out)
    );
    fs::remove_file(&lock).unwrap();
    let out = home.rewrite();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(home.kube()).unwrap(),
        fixture("kubeconfig.two-generations.rewritten.yaml")
    );
    assert_eq!(
        home.listing(".kube"),
        ["config", "config.portplane.bak"],
        "the dead writer's temp file is cleaned"
    );
}

#[test]
fn a_writer_that_ignores_the_lock_is_not_overwritten() {
    // talosctl writes its config without kubectl's lock: if it writes while
    // we are between our read and our rename, our rename must not win.
    let home = Home::new();
    fs::remove_file(home.kube()).unwrap(); // only the talosconfig is written
    let marker = home.dir.path().join("paused");
    let mut child = paused(&home, &marker);
    let talosctl_wrote = fixture("talosconfig.two-generations.yaml").replace(
        "    homelab:",
        "    joelclaw-2:\n        endpoints:\n            - 127.0.0.1:61000\n    homelab:",
    );
    fs::write(home.talos(), &talosctl_wrote).unwrap();
    fs::remove_file(&marker).unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(!status.success(), "the kubeconfig is missing");
            break;
        }
        if marker.exists() {
            fs::remove_file(&marker).unwrap(); // the retry pauses again
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    let text = fs::read_to_string(home.talos()).unwrap();
    // The newer generation talosctl added is kept and is the one rewritten.
    assert!(text.contains("    joelclaw-2:\n        endpoints:\n            - 127.0.0.1:15000\n        nodes:\n            - 10.5.0.2\n"), "{text}");
    assert!(
        text.contains("            - 127.0.0.1:63325\n"),
        "joelclaw-1 left as it was: {text}"
    );
}

#[test]
fn a_held_kubectl_lock_is_waited_for_and_the_holders_write_kept() {
    let home = Home::new();
    let lock = home.dir.path().join(".kube/config.lock");
    fs::write(&lock, "").unwrap();
    let mut child = home
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = ChildGuard(child);
    // The agent says when it starts waiting for the lock: only then is it
    // known to be blocked on it.
    let (waiting_tx, waiting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("waiting for the lock") {
                let _ = waiting_tx.send(line);
            }
        }
    });
    let line = waiting
        .recv_timeout(Duration::from_secs(10))
        .expect("the agent never said it waits for kubectl's lock");
    assert!(line.contains("config.lock"), "{line}");
    // "kubectl" finishes its write under the lock and releases it.
    let kubectl_wrote = fixture("kubeconfig.two-generations.yaml")
        .replace(
            "kind: Config\n",
            "kind: Config\npreferences:\n  colors: true\n",
        )
        .replace("preferences: {}\n", "");
    fs::write(home.kube(), &kubectl_wrote).unwrap();
    fs::remove_file(&lock).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success());
    let text = fs::read_to_string(home.kube()).unwrap();
    assert!(text.contains("preferences:\n  colors: true\n"), "{text}");
    assert!(text.contains("server: https://127.0.0.1:16443"));
}

#[test]
fn kubeconfig_and_talosconfig_env_vars_win() {
    let home = Home::new();
    let other = home.dir.path().join("other-kubeconfig");
    fs::write(&other, "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n  name: work\n").unwrap();
    let env_kube = home.dir.path().join("env-kubeconfig");
    fs::write(&env_kube, fixture("kubeconfig.two-generations.yaml")).unwrap();
    let env_talos = home.dir.path().join("env-talosconfig");
    fs::write(&env_talos, fixture("talosconfig.two-generations.yaml")).unwrap();
    let missing = home.dir.path().join("missing");
    let list = std::env::join_paths([&missing, &other, &env_kube]).unwrap();
    let out = home
        .command()
        .env("KUBECONFIG", list)
        .env("TALOSCONFIG", &env_talos)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(&env_kube).unwrap(),
        fixture("kubeconfig.two-generations.rewritten.yaml")
    );
    assert_eq!(
        fs::read_to_string(&env_talos).unwrap(),
        fixture("talosconfig.two-generations.rewritten.yaml")
    );
    assert!(
        fs::read_to_string(&other)
            .unwrap()
            .contains("https://10.0.0.1:6443"),
        "a file without the cluster is left alone"
    );
    assert_eq!(
        fs::read_to_string(home.kube()).unwrap(),
        fixture("kubeconfig.two-generations.yaml")
    );
    assert!(!missing.exists());
}
