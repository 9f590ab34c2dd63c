//! Point kubeconfig and talosconfig at the operator ports without losing a
//! byte: targeted, verified YAML edits (pure) and an atomic, locked writer.

pub mod apply;
pub mod atomic;
pub mod edit;
pub mod error;
pub mod kubeconfig;
pub mod names;
pub mod path;
pub mod talosconfig;
pub mod watch;
pub mod yaml;

pub use apply::{Env, FileReport, rewrite_kubeconfig, rewrite_talosconfig};
pub use error::RewriteError;
pub use watch::{keep_rewritten, keep_rewritten_with};
