//! Running the agent as a boot-time service: `install`/`uninstall` under
//! launchd (macOS, a LaunchDaemon that runs as the user) or systemd (Linux,
//! a system unit with `User=`), and how the service manager sees it.
//!
//! Every target folder hangs off [`Paths::root`], `/` unless `--root` (or
//! `PORTPLANE_INSTALL_ROOT`) says otherwise, so tests install into a
//! temporary folder.

pub mod files;
pub mod install;
pub mod launchd;
pub mod manager;
pub mod stale;
pub mod systemd;
pub mod uninstall;
pub mod user;

use std::path::{Path, PathBuf};

/// launchd label, also the plist's file name.
pub const LABEL: &str = "dev.portplane.agent";
/// systemd unit name.
pub const UNIT: &str = "portplane-agent.service";

/// The service manager to install under.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Launchd,
    Systemd,
}

impl Platform {
    /// launchd on macOS, systemd elsewhere.
    pub fn native() -> Platform {
        if cfg!(target_os = "macos") {
            Platform::Launchd
        } else {
            Platform::Systemd
        }
    }

    /// The command that starts the installed service.
    pub fn start_hint(self) -> String {
        match self {
            Platform::Launchd => format!("sudo launchctl kickstart -k system/{LABEL}"),
            Platform::Systemd => format!("sudo systemctl start {UNIT}"),
        }
    }

    /// Where its logs go.
    pub fn logs_hint(self, paths: &Paths) -> String {
        match self {
            Platform::Launchd => format!("tail -f {}", paths.launchd_log().display()),
            Platform::Systemd => format!("journalctl -u {UNIT} -f"),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Platform::Launchd => "launchd",
            Platform::Systemd => "systemd",
        })
    }
}

/// Where the service files go.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: Option<&Path>) -> Paths {
        Paths {
            root: root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf),
        }
    }

    fn under(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// `/Library/LaunchDaemons/dev.portplane.agent.plist`.
    pub fn plist(&self) -> PathBuf {
        self.under(&format!("/Library/LaunchDaemons/{LABEL}.plist"))
    }

    /// `/Library/Logs/portplane`, owned by the agent's user.
    pub fn launchd_log_dir(&self) -> PathBuf {
        self.under("/Library/Logs/portplane")
    }

    pub fn launchd_log(&self) -> PathBuf {
        self.launchd_log_dir().join("agent.log")
    }

    /// `/etc/systemd/system/portplane-agent.service`.
    pub fn unit(&self) -> PathBuf {
        self.under(&format!("/etc/systemd/system/{UNIT}"))
    }

    /// The file the platform installs.
    pub fn service_file(&self, platform: Platform) -> PathBuf {
        match platform {
            Platform::Launchd => self.plist(),
            Platform::Systemd => self.unit(),
        }
    }
}
