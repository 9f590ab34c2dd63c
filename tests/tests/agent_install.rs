//! `portplane-agent install`/`uninstall` into a temporary root: a real
//! `ssh -N -L` tunnel on an operator port (against the real test sshd) is
//! stopped, an unrelated listener is left alone, a foreign holder of an
//! operator port makes install fail naming it, the service manager's command
//! sequence is issued, and the real agent then holds the port. The plist is
//! read with Python's plistlib (as launchd reads it); the unit passes
//! `systemd-analyze verify`.
//!
//! STAND-INS: `launchctl` and `systemctl` are recording stand-ins (see
//! service_support), the only ones allowed, because no service manager runs
//! on these machines. The test starts `run` itself where launchd/systemd
//! would.

// Test code: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;
mod tunnel_support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use service_support::{Guarded, ServiceManager, mode, stdout, text};
use tunnel_support::{Agent, config_for, echo_server, listen_port, wait_echo, wait_until};

/// A manual operator tunnel as people make them: `ssh -N -L`.
fn manual_tunnel(sshd: &Sshd, port: u16, target: u16) -> Guarded {
    let child = Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config_path())
        // Lima's ssh.config asks for a persistent ControlMaster; a plain
        // tunnel keeps the listener in this child (the one the test reaps).
        .args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .args(["-o", "ControlMaster=no", "-o", "ControlPath=none", "-L"])
        .arg(format!("127.0.0.1:{port}:127.0.0.1:{target}"))
        .arg(sshd.host_alias())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Guarded(child);
    wait_until(
        Duration::from_secs(15),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || format!("ssh -L never listened on {port}"),
    );
    child
}

struct Setup {
    sshd: Sshd,
    svc: ServiceManager,
    dir: tempfile::TempDir,
    kube: u16,
    talos: u16,
    echo: u16,
}

impl Setup {
    fn new() -> Setup {
        let sshd = Sshd::start().unwrap();
        let echo = echo_server();
        let dir = tempfile::tempdir().unwrap();
        let (kube, talos) = (listen_port(), listen_port());
        let config = config_for(
            &sshd,
            &[
                ("kube-apiserver", kube, format!("127.0.0.1:{echo}")),
                ("talos-api", talos, format!("127.0.0.1:{echo}")),
            ],
            &format!(
                "socket = \"{}\"",
                dir.path().join("state/agent.sock").display()
            ),
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        Setup {
            sshd,
            svc: ServiceManager::new(),
            dir,
            kube,
            talos,
            echo,
        }
    }

    fn config(&self) -> String {
        self.dir.path().join("agent.toml").display().to_string()
    }

    fn install(&self, platform: &str, extra: &[&str]) -> std::process::Output {
        let config = self.config();
        let mut args = vec!["install", "--config", &config, "--platform", platform];
        args.extend_from_slice(extra);
        self.svc.run(&args)
    }
}

#[test]
fn systemd_install_stops_the_manual_tunnel_and_the_agent_takes_the_port() {
    let s = Setup::new();
    let mut ssh = manual_tunnel(&s.sshd, s.kube, s.echo);
    let ssh_pid = ssh.id();
    let unrelated = TcpListener::bind("127.0.0.1:0").unwrap();
    let kubeconfig = s.sshd.ssh_config_path().with_file_name("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();

    // --dry-run: every file and command printed, nothing changed.
    let out = s.install("systemd", &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let dry = stdout(&out);
    assert!(
        dry.contains("[Service]") && dry.contains("Type=notify"),
        "{dry}"
    );
    assert!(dry.contains("would run: systemctl daemon-reload"), "{dry}");
    let kubeconfig = s.sshd.ssh_config_path().with_file_name("kubeconfig");
    if kubeconfig.exists() {
        assert!(
            dry.contains(&format!("would copy {}", kubeconfig.display())),
            "{dry}"
        );
    }
    assert!(
        dry.contains("would run: systemctl enable --now portplane-agent.service"),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "would stop stale manual tunnel pid {ssh_pid} (ssh)"
        )),
        "{dry}"
    );
    assert!(
        s.svc.calls().iter().all(|c| !c.starts_with("systemctl ")),
        "{:?}",
        s.svc.calls()
    );
    assert!(
        std::fs::read_dir(s.svc.root()).unwrap().next().is_none(),
        "dry run wrote files"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", s.kube)).is_ok(),
        "dry run stopped the tunnel"
    );

    let out = s.install("systemd", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains(&format!(
            "stopped stale manual tunnel pid {ssh_pid} (ssh) on 127.0.0.1:{}",
            s.kube
        )),
        "{said}"
    );
    assert!(said.contains("installed portplane-agent.service"), "{said}");
    let status = ssh
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("ssh {ssh_pid} still running after install"));
    // ssh exits 0 on TERM; that it is gone (and reaped) is the point.
    let _ = status;
    // The unrelated listener is untouched.
    assert!(TcpStream::connect(unrelated.local_addr().unwrap()).is_ok());
    assert_eq!(
        s.svc.calls(),
        [
            "systemctl daemon-reload",
            "systemctl enable --now portplane-agent.service"
        ],
        "the daemon's command sequence"
    );

    let unit = s
        .svc
        .root()
        .join("etc/systemd/system/portplane-agent.service");
    let content = std::fs::read_to_string(&unit).unwrap();
    assert_eq!(mode(&unit), 0o644);
    let bin = portplane_e2e::workspace_bin("portplane-agent");
    let bin = std::fs::canonicalize(bin).unwrap();
    assert!(
        content.contains(&format!(
            "ExecStart={} run --config {}",
            bin.display(),
            s.config()
        )),
        "{content}"
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "UMask=0077",
    ] {
        assert!(
            content.lines().any(|l| l == line),
            "{line} missing:\n{content}"
        );
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    assert!(
        content.lines().any(|l| l == format!("User={user}")),
        "{content}"
    );
    let rw = content
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .unwrap();
    let sshd_dir = s
        .sshd
        .ssh_config_path()
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert!(
        rw.split(' ').any(|p| p == format!("-{sshd_dir}")),
        "kubeconfig folder: {rw}"
    );
    assert!(
        rw.split(' ')
            .any(|p| p == format!("-{}", s.dir.path().join("state").display())),
        "state folder: {rw}"
    );
    verify_unit(&unit);

    // The service manager's step: the test starts `run` where systemd would.
    let agent = Agent::start(&std::fs::read_to_string(s.config()).unwrap());
    wait_echo(&agent, s.kube, Duration::from_secs(20));
    let holders = portplane_agent_holders(s.kube);
    assert_eq!(
        holders,
        vec![agent.pid().unwrap()],
        "the agent holds the port"
    );

    // Idempotent: same file, the running agent left to the service manager.
    s.svc.clear_calls();
    let before = std::fs::read_to_string(&unit).unwrap();
    let out = s.install("systemd", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("held by the agent itself"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), before);
    assert_eq!(
        s.svc.calls(),
        [
            "systemctl daemon-reload",
            "systemctl enable --now portplane-agent.service",
            "systemctl restart portplane-agent.service"
        ]
    );

    // Other content is not overwritten without --force.
    std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
    let out = s.install("systemd", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
    let out = s.install("systemd", &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), before);
    drop(agent);

    // Uninstall.
    s.svc.clear_calls();
    let out = s.svc.run(&["uninstall", "--platform", "systemd"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit.exists());
    assert_eq!(
        s.svc.calls(),
        [
            "systemctl disable --now portplane-agent.service",
            "systemctl daemon-reload"
        ]
    );
}

#[test]
fn launchd_install_writes_a_plist_launchd_can_read_and_retries_bootstrap() {
    let s = Setup::new();
    let mut ssh = manual_tunnel(&s.sshd, s.talos, s.echo);
    s.svc.fail_bootstraps(2);
    let out = s.install("launchd", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("installed dev.portplane.agent"),
        "{}",
        text(&out)
    );
    assert!(
        ssh.wait_exit(Duration::from_secs(10)).is_some(),
        "ssh still running"
    );
    let plist = s
        .svc
        .root()
        .join("Library/LaunchDaemons/dev.portplane.agent.plist");
    let p = plist.display().to_string();
    assert_eq!(
        s.svc.calls(),
        [
            "launchctl bootout system/dev.portplane.agent".to_string(),
            "launchctl enable system/dev.portplane.agent".into(),
            format!("launchctl bootstrap system {p}"),
            format!("launchctl bootstrap system {p}"),
            format!("launchctl bootstrap system {p}"),
            "launchctl kickstart -k system/dev.portplane.agent".into(),
        ],
        "never load/unload; bootstrap retried while it says I/O error"
    );
    assert_eq!(mode(&plist), 0o644);
    let log_dir = s.svc.root().join("Library/Logs/portplane");
    assert!(log_dir.is_dir());

    // Read as launchd reads it.
    let out = Command::new("python3")
        .args([
            "-c",
            "import plistlib, json, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&plist)
        .output()
        .unwrap();
    assert!(out.status.success(), "plistlib: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bin = std::fs::canonicalize(portplane_e2e::workspace_bin("portplane-agent")).unwrap();
    assert_eq!(v["Label"], "dev.portplane.agent");
    assert_eq!(
        v["ProgramArguments"],
        serde_json::json!([bin.display().to_string(), "run", "--config", s.config()])
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    assert_eq!(v["UserName"], user);
    assert_eq!(v["RunAtLoad"], true);
    assert_eq!(v["KeepAlive"], serde_json::json!({"SuccessfulExit": false}));
    assert!(v["ThrottleInterval"].as_u64().unwrap() > 0);
    assert_eq!(v["ProcessType"], "Background");
    let home = nix_home(&user);
    assert_eq!(v["EnvironmentVariables"]["HOME"], home);
    let log = log_dir.join("agent.log").display().to_string();
    assert_eq!(v["StandardOutPath"], log);
    assert_eq!(v["StandardErrorPath"], log);

    // The service manager's step: the test starts `run` where launchd would.
    let agent = Agent::start(&std::fs::read_to_string(s.config()).unwrap());
    wait_echo(&agent, s.talos, Duration::from_secs(20));
    assert_eq!(portplane_agent_holders(s.talos), vec![agent.pid().unwrap()]);
    drop(agent);

    s.svc.clear_calls();
    let out = s.svc.run(&["uninstall", "--platform", "launchd"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!plist.exists());
    assert_eq!(
        s.svc.calls(),
        [
            "launchctl bootout system/dev.portplane.agent",
            "launchctl disable system/dev.portplane.agent"
        ]
    );
}

#[test]
fn a_foreign_holder_of_an_operator_port_fails_install_and_is_left_alone() {
    let s = Setup::new();
    // This test process is not an ssh tunnel: install must not touch it.
    let foreign = TcpListener::bind(("127.0.0.1", s.kube)).unwrap();
    let out = s.install("systemd", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "forward \"kube-apiserver\": 127.0.0.1:{} is held by pid {}",
            s.kube,
            std::process::id()
        )),
        "{err}"
    );
    assert!(err.contains("left alone"), "{err}");
    assert!(s.svc.calls().is_empty(), "{:?}", s.svc.calls());
    assert!(
        !s.svc
            .root()
            .join("etc/systemd/system/portplane-agent.service")
            .exists()
    );
    assert!(TcpStream::connect(foreign.local_addr().unwrap()).is_ok());
}

#[test]
fn uninstall_restore_configs_puts_back_the_files_from_before_install() {
    let s = Setup::new();
    let dir = s.sshd.ssh_config_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("kubeconfig"), "before: kube\n").unwrap();
    std::fs::write(dir.join("talosconfig"), "before: talos\n").unwrap();
    let out = s.install("systemd", &[]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(dir.join("kubeconfig"), "after: kube\n").unwrap();
    let out = s.svc.run(&[
        "uninstall",
        "--platform",
        "systemd",
        "--restore-configs",
        "--config",
        &s.config(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("kubeconfig")).unwrap(),
        "before: kube\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("talosconfig")).unwrap(),
        "before: talos\n"
    );
    assert!(stdout(&out).contains("restored"), "{}", text(&out));
}

#[test]
fn sudo_install_runs_the_service_as_the_invoking_user_and_gives_them_its_folders() {
    let s = Setup::new();
    let out = s
        .svc
        .agent(&["install", "--config", &s.config(), "--platform", "systemd"])
        .env("SUDO_USER", "nobody")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("for user nobody"), "{}", text(&out));
    let unit = std::fs::read_to_string(
        s.svc
            .root()
            .join("etc/systemd/system/portplane-agent.service"),
    )
    .unwrap();
    assert!(unit.lines().any(|l| l == "User=nobody"), "{unit}");
    let home = passwd_field("nobody", 5);
    assert!(
        unit.lines()
            .any(|l| l == format!("Environment=HOME={home}")),
        "{unit}"
    );
    // The state folder it created belongs to that user, not root.
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(s.dir.path().join("state")).unwrap();
    assert_eq!(state.uid().to_string(), passwd_field("nobody", 2));
    assert_eq!(state.mode() & 0o777, 0o700);
}

/// `systemd-analyze verify` on the installed unit (Debian's systemd package;
/// nothing needs systemd running).
fn verify_unit(unit: &Path) {
    let tool = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze missing: scripts/deps installs Debian's systemd package");
    let out = Command::new(tool)
        .arg("verify")
        .arg(unit)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("portplane-agent.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}

/// pids holding `port`, from /proc (as the agent reads it).
fn portplane_agent_holders(port: u16) -> Vec<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut pids: Vec<u32> = t
            .split("pid=")
            .skip(1)
            .filter_map(|p| p.split(',').next()?.parse().ok())
            .collect();
        pids.sort();
        pids.dedup();
        return pids;
    }
    panic!("ss (iproute2) is needed to read the port's holder");
}

fn nix_home(user: &str) -> String {
    passwd_field(user, 5)
}

/// Field `n` of `user`'s /etc/passwd line (2: uid, 5: home).
fn passwd_field(user: &str, n: usize) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f[n].to_string())
        })
        .unwrap_or_else(|| panic!("no {user} in /etc/passwd"))
}
