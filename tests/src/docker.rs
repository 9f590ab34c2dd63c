//! A real `dockerd` (Debian's `docker.io`) for one test: its own data root,
//! exec root and socket in a temp folder, no bridge and no iptables (nothing
//! on the host's network changes; tests only read Docker's records of port
//! maps and never send traffic to a container). Stopped by pid on drop.
//!
//! [`Docker::talos_node`] runs a container named like the Talos node with
//! the seed's port maps, from a busybox image built offline: Debian's
//! `busybox-static` binary in a rootfs tarball, `docker import`ed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The image `talos_node` runs.
pub const IMAGE: &str = "portplane-busybox:e2e";

pub struct Docker {
    child: Option<Child>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Docker {
    /// Start dockerd and wait until it answers.
    pub fn start() -> anyhow::Result<Docker> {
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("dockerd is missing; install Debian's docker.io (scripts/deps dockerd)")?;
        // Short path: the exec root holds unix sockets (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("ppdk-")
            .tempdir_in("/tmp")?;
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log"))?;
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let docker = Docker {
            child: Some(child),
            socket,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if docker
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(docker);
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer within 60 s; its log:\n{}",
                    docker.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `unix:///.../docker.sock`, for `docker -H` and `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Run the docker CLI against this daemon; stdout, or an error with stderr.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Build [`IMAGE`] offline: busybox-static in a rootfs, `docker import`;
    /// nothing to do when this dockerd has it already.
    pub fn import_busybox(&self) -> anyhow::Result<()> {
        if self.docker(&["image", "inspect", IMAGE]).is_ok() {
            return Ok(());
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!(
                "/bin/busybox is missing; install Debian's busybox-static (scripts/deps busybox)"
            );
        }
        let rootfs = self.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.context("tar stdout")?)
            .output()?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Run a container `name` with `maps` (`hostIP:hostPort:containerPort`
    /// each, as for `docker run -p`), sleeping forever.
    pub fn talos_node(&self, name: &str, maps: &[&str]) -> anyhow::Result<()> {
        self.import_busybox()?;
        let mut args = vec!["run", "-d", "--name", name];
        for m in maps {
            args.extend(["-p", m]);
        }
        args.extend([IMAGE, "/bin/sleep", "2147483647"]);
        self.docker(&args)?;
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Containers first (by dockerd, so its mounts go with them), then
        // dockerd by pid.
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
