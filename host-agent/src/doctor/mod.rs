//! `portplane-agent doctor`: the seed's verification list and what people
//! trip over, as checks grouped by category, one line each with a mark, and
//! for a failure one line saying what is wrong and one saying what to do
//! (the layout of `linkerd check`). Exit 1 only when a check fails.

pub mod apis;
pub mod checks;
pub mod kube_api;
pub mod ports;
pub mod talos_tls;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    Pass,
    Warn,
    Fail,
}

/// One check's outcome. `id` is stable (for scripts and tests); `name`
/// says what was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub category: String,
    pub id: String,
    pub name: String,
    pub result: Mark,
    /// What is wrong (warn/fail only).
    pub problem: Option<String>,
    /// What to do about it (warn/fail only).
    pub hint: Option<String>,
}

impl Check {
    pub fn pass(category: &str, id: &str, name: impl Into<String>) -> Check {
        Check {
            category: category.into(),
            id: id.into(),
            name: name.into(),
            result: Mark::Pass,
            problem: None,
            hint: None,
        }
    }

    pub fn fail(
        category: &str,
        id: &str,
        name: impl Into<String>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            result: Mark::Fail,
            problem: Some(problem.into()),
            hint: Some(hint.into()),
            ..Check::pass(category, id, name)
        }
    }

    pub fn warn(
        category: &str,
        id: &str,
        name: impl Into<String>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            result: Mark::Warn,
            ..Check::fail(category, id, name, problem, hint)
        }
    }
}

/// `doctor -o json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// No check failed (warnings allowed).
    pub ok: bool,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let ok = checks.iter().all(|c| c.result != Mark::Fail);
        Report { checks, ok }
    }
}

/// The text layout: a heading per category, then `√`/`‼`/`×` lines.
pub fn render(report: &Report) -> String {
    let mut t = String::new();
    let mut category = "";
    for c in &report.checks {
        if c.category != category {
            if !category.is_empty() {
                t.push('\n');
            }
            category = &c.category;
            let _ = writeln!(t, "{category}\n{}", "-".repeat(category.chars().count()));
        }
        let mark = match c.result {
            Mark::Pass => "√",
            Mark::Warn => "‼",
            Mark::Fail => "×",
        };
        let _ = writeln!(t, "{mark} {}", c.name);
        if let Some(p) = &c.problem {
            let _ = writeln!(t, "    {p}");
        }
        if let Some(h) = &c.hint {
            let _ = writeln!(t, "    fix: {h}");
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.result == Mark::Fail)
        .count();
    let warned = report
        .checks
        .iter()
        .filter(|c| c.result == Mark::Warn)
        .count();
    let _ = writeln!(
        t,
        "\nStatus check results are {}",
        match (failed, warned) {
            (0, 0) => "√".to_string(),
            (0, w) => format!("√ ({w} warning{})", if w == 1 { "" } else { "s" }),
            (f, _) => format!("× ({f} failed)"),
        }
    );
    t
}
