//! Shared by the agent_status, agent_install and agent_doctor tests:
//! recording stand-ins for `launchctl` and `systemctl`, and running the
//! `portplane-agent` CLI.
//!
//! STAND-INS: `launchctl` and `systemctl` below are shell scripts that record
//! their arguments and answer like the real tools. They are the only
//! stand-ins in these tests, because no service manager runs on these
//! machines (DESIGN.md, "What real means"); everything else is real.
// Test helpers: a failed setup panics the test that called it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portplane_e2e::workspace_bin;

/// A folder with recording `launchctl`/`systemctl` stand-ins, a temporary
/// install root, and what the stand-ins answer.
pub struct ServiceManager {
    pub dir: tempfile::TempDir,
}

const STAND_IN: &str = r#"#!/bin/sh
# Recording stand-in (no service manager runs on test machines).
here=$(dirname "$0")
tool=$(basename "$0")
echo "$tool $*" >>"$here/calls.log"
case "$tool $1" in
  "systemctl show")
    if [ -f "$here/systemctl.show" ]; then cat "$here/systemctl.show"; else printf 'LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\nExecMainStatus=0\nNRestarts=0\n'; fi ;;
  "launchctl print")
    if [ -f "$here/launchctl.print" ]; then cat "$here/launchctl.print"; else echo "Could not find service \"$2\" in domain for system" >&2; exit 113; fi ;;
  "launchctl bootstrap")
    # Fail the first $(cat bootstrap.fail) attempts as macOS does while a bootout settles.
    n=$(cat "$here/bootstrap.fail" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then echo $((n - 1)) >"$here/bootstrap.fail"; echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; fi ;;
  "launchctl bootout")
    if [ ! -f "$here/launchctl.print" ]; then echo "Boot-out failed: 3: No such process" >&2; exit 3; fi ;;
esac
exit 0
"#;

impl ServiceManager {
    pub fn new() -> ServiceManager {
        let dir = tempfile::Builder::new()
            .prefix("portplane-svc-")
            .tempdir()
            .unwrap();
        for tool in ["launchctl", "systemctl"] {
            let path = dir.path().join("bin").join(tool);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, STAND_IN).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        ServiceManager { dir }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Stands for `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Every stand-in call so far, one `tool args...` line each.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.bin().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.bin().join("calls.log"));
    }

    /// What `systemctl show` answers from now on.
    pub fn systemd_shows(&self, text: &str) {
        std::fs::write(self.bin().join("systemctl.show"), text).unwrap();
    }

    /// What `launchctl print` answers from now on (also makes bootout succeed).
    pub fn launchd_prints(&self, text: &str) {
        std::fs::write(self.bin().join("launchctl.print"), text).unwrap();
    }

    /// The next `n` bootstraps fail with launchd's I/O error.
    pub fn fail_bootstraps(&self, n: u32) {
        std::fs::write(self.bin().join("bootstrap.fail"), n.to_string()).unwrap();
    }

    /// `portplane-agent <args>` with the stand-ins first on PATH and the
    /// install root set.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_bin("portplane-agent"));
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(args)
            .env("PATH", path)
            .env("PORTPLANE_INSTALL_ROOT", self.root())
            .env_remove("KUBECONFIG")
            .env_remove("TALOSCONFIG")
            .env_remove("SUDO_USER");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.agent(args).output().unwrap()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A child process the test started, killed and reaped by pid on drop
/// (also when an assertion fails first).
pub struct Guarded(pub std::process::Child);

impl Guarded {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Reap it if it exited within `timeout`; its status.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
