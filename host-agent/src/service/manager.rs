//! How the service manager sees the agent: `launchctl print system/<label>`
//! or `systemctl show <unit>`. Read-only; used by `status` and `doctor`.

use std::collections::BTreeMap;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{LABEL, Paths, Platform, UNIT};

/// One stable shape for both managers. `None` means "not known": the
/// manager could not be asked (`error` says why).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub manager: String,
    /// launchd label or systemd unit.
    pub name: String,
    /// The plist/unit file exists.
    pub installed: bool,
    /// launchd: bootstrapped; systemd: `LoadState=loaded`.
    pub loaded: Option<bool>,
    pub running: Option<bool>,
    pub pid: Option<u32>,
    /// launchd: `last exit code`; systemd: `ExecMainStatus`.
    pub last_exit: Option<i64>,
    /// launchd: `runs`; systemd: `NRestarts`.
    pub restarts: Option<u64>,
    /// The manager's own words for the state (`running`, `activating/auto-restart`).
    pub state: Option<String>,
    pub error: Option<String>,
}

impl ServiceView {
    /// Restarted after failures and not up now, or failing over and over.
    pub fn crash_looping(&self) -> bool {
        let failing = self.last_exit.is_some_and(|c| c != 0);
        let auto_restart = self
            .state
            .as_deref()
            .is_some_and(|s| s.contains("auto-restart") || s.contains("failed"));
        auto_restart || (failing && self.restarts.unwrap_or(0) > 1 && self.running != Some(true))
    }
}

/// Ask the platform's manager about the agent's service.
pub fn query(platform: Platform, paths: &Paths) -> ServiceView {
    let mut view = ServiceView {
        manager: platform.to_string(),
        name: match platform {
            Platform::Launchd => LABEL.into(),
            Platform::Systemd => UNIT.into(),
        },
        installed: paths.service_file(platform).exists(),
        ..ServiceView::default()
    };
    match platform {
        Platform::Launchd => launchd(&mut view),
        Platform::Systemd => systemd(&mut view),
    }
    view
}

fn launchd(view: &mut ServiceView) {
    let out = match Command::new("launchctl")
        .args(["print", &format!("system/{LABEL}")])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            view.error = Some(format!("cannot run launchctl: {e}"));
            return;
        }
    };
    if !out.status.success() {
        // "Could not find service ... in domain for system": not bootstrapped.
        view.loaded = Some(false);
        view.running = Some(false);
        return;
    }
    let fields = launchctl_fields(&String::from_utf8_lossy(&out.stdout));
    view.loaded = Some(true);
    view.state = fields.get("state").cloned();
    view.running = Some(view.state.as_deref() == Some("running"));
    view.pid = fields.get("pid").and_then(|p| p.parse().ok());
    view.last_exit = fields.get("last exit code").and_then(|c| {
        // "0" or "1: Operation not permitted" or "(never exited)".
        c.split(':').next()?.trim().parse().ok()
    });
    view.restarts = fields.get("runs").and_then(|r| r.parse().ok());
}

/// `key = value` lines of the service's own block (the first, tab-indented
/// once), as `launchctl print` writes them.
pub fn launchctl_fields(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        // Nested blocks are indented deeper; only the service's own lines.
        let Some(rest) = line.strip_prefix('\t') else {
            continue;
        };
        if rest.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = rest.split_once(" = ") {
            fields
                .entry(k.trim().to_string())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    fields
}

fn systemd(view: &mut ServiceView) {
    let out = match Command::new("systemctl")
        .args([
            "show",
            UNIT,
            "--property=LoadState,ActiveState,SubState,MainPID,ExecMainStatus,NRestarts",
        ])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            view.error = Some(format!("cannot run systemctl: {e}"));
            return;
        }
    };
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = why
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        view.error = Some(format!("systemctl show {UNIT}: {}", why.join("; ")));
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    view.loaded = fields.get("LoadState").map(|s| *s == "loaded");
    let active = fields.get("ActiveState").copied().unwrap_or("");
    let sub = fields.get("SubState").copied().unwrap_or("");
    view.state = Some(format!("{active}/{sub}"));
    view.running = Some(active == "active" && sub == "running");
    view.pid = fields
        .get("MainPID")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0);
    view.last_exit = fields.get("ExecMainStatus").and_then(|c| c.parse().ok());
    view.restarts = fields.get("NRestarts").and_then(|c| c.parse().ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_service_block_of_launchctl_print() {
        let text = "system/dev.portplane.agent = {\n\tactive count = 1\n\tpath = /Library/LaunchDaemons/dev.portplane.agent.plist\n\tstate = running\n\n\tprogram = /usr/local/bin/portplane-agent\n\tenvironment = {\n\t\tstate = nested\n\t}\n\truns = 3\n\tpid = 812\n\tlast exit code = 1: Operation not permitted\n}\n";
        let f = launchctl_fields(text);
        assert_eq!(f["state"], "running");
        assert_eq!(f["pid"], "812");
        assert_eq!(f["runs"], "3");
        assert_eq!(f["last exit code"], "1: Operation not permitted");
    }

    #[test]
    fn crash_loop_is_auto_restart_or_repeated_failures_while_down() {
        let mut v = ServiceView {
            state: Some("activating/auto-restart".into()),
            ..ServiceView::default()
        };
        assert!(v.crash_looping());
        v.state = Some("active/running".into());
        v.running = Some(true);
        v.last_exit = Some(1);
        v.restarts = Some(4);
        assert!(!v.crash_looping(), "up now");
        v.running = Some(false);
        assert!(v.crash_looping());
    }
}
