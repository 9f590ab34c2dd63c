//! A real OpenSSH `sshd` on loopback standing in for the Colima VM, with a
//! Lima-style `ssh.config` beside it, written with the keys Lima writes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::{free_port, repo_root};

/// The Lima instance name; the ssh.config host alias is `lima-<name>`.
pub const LIMA_INSTANCE: &str = "colima";

pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    user: String,
    /// sshd_config(5) `LogLevel`.
    log_level: &'static str,
    /// More sshd_config(5) lines, appended.
    extra_config: &'static str,
}

impl Sshd {
    /// Start sshd on a free loopback port.
    pub fn start() -> anyhow::Result<Sshd> {
        Self::start_on(free_port()?)
    }

    /// Start sshd on a free loopback port, logging at `level` (sshd_config(5)
    /// `LogLevel`): at DEBUG, sshd logs each channel it opens with the window
    /// and packet size the client offered; at DEBUG2, each window adjustment
    /// it receives ("channel N: rcvd adjust BYTES").
    pub fn start_with_log_level(level: &'static str) -> anyhow::Result<Sshd> {
        Self::start_at(free_port()?, level, "")
    }

    /// [`Sshd::start_with_log_level`], with `extra` (sshd_config(5) lines,
    /// each ending in a newline) appended to the test config.
    pub fn start_with_config(level: &'static str, extra: &'static str) -> anyhow::Result<Sshd> {
        Self::start_at(free_port()?, level, extra)
    }

    /// Start sshd on the given loopback port.
    pub fn start_on(port: u16) -> anyhow::Result<Sshd> {
        Self::start_at(port, "INFO", "")
    }

    fn start_at(
        port: u16,
        log_level: &'static str,
        extra_config: &'static str,
    ) -> anyhow::Result<Sshd> {
        let sshd = sshd_path()?;
        let dir = tempfile::Builder::new()
            .prefix("portplane-sshd-")
            .tempdir()?;
        let user = current_user()?;
        let mut me = Sshd {
            dir,
            port,
            child: None,
            user,
            log_level,
            extra_config,
        };
        me.generate_keys()?;
        me.write_sshd_config()?;
        me.write_ssh_config()?;
        let check = Command::new(&sshd)
            .arg("-t")
            .arg("-f")
            .arg(me.sshd_config_path())
            .output()?;
        if !check.status.success() {
            bail!(
                "sshd -t rejected the test config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        me.spawn()?;
        Ok(me)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// `lima-colima`, as in `~/.colima/_lima/colima/ssh.config`.
    pub fn host_alias(&self) -> String {
        format!("lima-{LIMA_INSTANCE}")
    }

    /// The Lima-style client config, for `ssh -F` and `portplane-agent`.
    pub fn ssh_config_path(&self) -> PathBuf {
        self.dir.path().join("ssh.config")
    }

    /// The user's private key (Lima's `_config/user`).
    pub fn identity_file(&self) -> PathBuf {
        self.dir.path().join("user")
    }

    /// The host's public key line (`ssh-ed25519 AAAA...`), for known_hosts tests.
    pub fn host_public_key(&self) -> anyhow::Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.path().join("ssh_host_ed25519_key.pub"))?
                .trim()
                .to_string(),
        )
    }

    /// Replace the host key, as a rebuilt VM would.
    pub fn regenerate_host_key(&mut self) -> anyhow::Result<()> {
        let key = self.dir.path().join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key)
    }

    /// The sshd listener's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill sshd and every session process it forked (sshd puts each
    /// connection in a session of its own, so a process-group kill misses
    /// them): established tunnels drop, as when the VM goes away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.wait();
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Start again on another port and write it into ssh.config, as Lima
    /// does on each VM start.
    pub fn restart_on(&mut self, port: u16) -> anyhow::Result<()> {
        self.stop();
        self.port = port;
        self.write_sshd_config()?;
        self.write_ssh_config()?;
        self.spawn()
    }

    fn sshd_config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("sshd.log"))?;
        let child = Command::new(sshd_path()?)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.sshd_config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(10))
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("sshd exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "sshd did not listen on 127.0.0.1:{} within {timeout:?}: {}",
            self.port,
            self.log()
        )
    }

    /// sshd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn generate_keys(&self) -> anyhow::Result<()> {
        keygen(&self.dir.path().join("ssh_host_ed25519_key"))?;
        keygen(&self.identity_file())?;
        std::fs::copy(
            self.identity_file().with_extension("pub"),
            self.dir.path().join("authorized_keys"),
        )?;
        Ok(())
    }

    /// `SetEnv SHLVL=1`: commands (the agent's `true`, docker inspect) run
    /// through the user's shell, and bash, when sshd runs it, reads
    /// ~/.bashrc only at shell level 1. This machine's root ~/.bashrc runs
    /// `pyenv init`, whose rehash lock, left behind by a shell killed with
    /// its test's sshd, made every later shell wait 60 s for it.
    fn write_sshd_config(&self) -> anyhow::Result<()> {
        let d = self.dir.path().display();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {d}/ssh_host_ed25519_key\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             MaxStartups 200:30:400\n\
             MaxSessions 100\n\
             SetEnv SHLVL=1\n\
             LogLevel {level}\n\
             {extra}",
            port = self.port,
            level = self.log_level,
            extra = self.extra_config,
        );
        std::fs::write(self.sshd_config_path(), config)?;
        Ok(())
    }

    /// The keys Lima writes into `~/.lima/<instance>/ssh.config` (Colima's is
    /// `~/.colima/_lima/colima/ssh.config`), in Lima's order.
    fn write_ssh_config(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut config = String::new();
        writeln!(config, "# This SSH config file can be passed to 'ssh -F'.")?;
        writeln!(
            config,
            "# This file is created by Lima, but not used by Lima itself currently."
        )?;
        writeln!(
            config,
            "# Modifications to this file will be lost on restarting the Lima instance."
        )?;
        writeln!(config, "Host {}", self.host_alias())?;
        writeln!(
            config,
            "  IdentityFile \"{}\"",
            self.identity_file().display()
        )?;
        writeln!(config, "  StrictHostKeyChecking no")?;
        writeln!(config, "  UserKnownHostsFile /dev/null")?;
        writeln!(config, "  NoHostAuthenticationForLocalhost yes")?;
        writeln!(config, "  PreferredAuthentications publickey")?;
        writeln!(config, "  Compression no")?;
        writeln!(config, "  BatchMode yes")?;
        writeln!(config, "  IdentitiesOnly yes")?;
        writeln!(config, "  GSSAPIAuthentication no")?;
        writeln!(
            config,
            "  Ciphers \"^aes128-gcm@openssh.com,aes256-gcm@openssh.com\""
        )?;
        writeln!(config, "  User {}", self.user)?;
        writeln!(config, "  ControlMaster auto")?;
        writeln!(config, "  ControlPath \"{}\"", d.join("ssh.sock").display())?;
        writeln!(config, "  ControlPersist yes")?;
        writeln!(config, "  Hostname 127.0.0.1")?;
        writeln!(config, "  Port {}", self.port)?;
        std::fs::write(self.ssh_config_path(), config)?;
        Ok(())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sshd`, installed through `scripts/deps` when missing.
pub fn sshd_path() -> anyhow::Result<PathBuf> {
    let path = PathBuf::from("/usr/sbin/sshd");
    if !path.exists() {
        let status = Command::new(repo_root().join("scripts/deps"))
            .arg("sshd")
            .status()?;
        if !status.success() || !path.exists() {
            bail!("OpenSSH server is not installed and scripts/deps could not install it");
        }
    }
    // sshd refuses to start without its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd")?;
    Ok(path)
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let output = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "portplane-test",
            "-f",
        ])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !output.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn current_user() -> anyhow::Result<String> {
    let output = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// Every live descendant of `pid`, found through /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    while let Some(parent) = parents.pop() {
        for &(child, ppid) in &all {
            if ppid == parent {
                found.push(child);
                parents.push(child);
            }
        }
    }
    found
}

/// Whether `pid` is a live process (a zombie awaiting its reaper is not).
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat[stat.rfind(')')? + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(1)?.parse().ok()
}

/// Kill `pid` and all its descendants. Each is stopped first, until a scan
/// finds no new one: a stopped process cannot fork, so no child escapes to
/// be re-parented between the scan and the kill.
pub fn kill_tree(pid: u32) {
    kill(pid, Signal::SIGSTOP);
    let mut stopped = vec![pid];
    loop {
        let fresh: Vec<u32> = descendants(pid)
            .into_iter()
            .filter(|p| !stopped.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for &p in &fresh {
            kill(p, Signal::SIGSTOP);
        }
        stopped.extend(fresh);
    }
    for &p in &stopped {
        kill(p, Signal::SIGKILL);
    }
    // SIGKILL is delivered asynchronously; return once all are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stopped.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}
