//! The talosconfig edit: pure text in, text and report out.
//!
//! talosctl writes `context: <name>` and `contexts: {<name>: {endpoints:
//! [...], nodes: [...], ca, crt, key}}`; re-created clusters are merged in
//! as `<name>-1`, `<name>-2`, ...

use super::edit::{Editor, NewValue, Place, at, key};
use super::kubeconfig::Edited;
use super::names::generation;
use super::yaml::{self, Node, YamlError};

#[derive(Debug, Clone)]
pub struct TalosTarget {
    /// Context name as configured; `-N` re-creations are followed.
    pub context: String,
    /// The forward's listen address, `127.0.0.1:15000`.
    pub endpoint: String,
    /// The Talos node as seen through the tunnel, `10.5.0.2`.
    pub node: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TalosReport {
    pub context: String,
    pub previous_endpoints: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn rewrite(text: &str, target: &TalosTarget) -> Result<Edited<TalosReport>, YamlError> {
    let root = yaml::parse(text)?.ok_or_else(|| YamlError {
        line: 1,
        problem: "the file is empty; expected a talosconfig".into(),
    })?;
    if root.entries().is_none() {
        return Err(at(
            &root,
            "expected a talosconfig (a mapping with context and contexts)",
        ));
    }
    let contexts = root.get("contexts").ok_or_else(|| {
        at(
            &root,
            "no `contexts:`; expected a talosconfig written by talosctl",
        )
    })?;
    let entries = contexts.entries().ok_or_else(|| {
        at(
            contexts,
            "`contexts`: expected a mapping of context name to {endpoints, nodes, ca, crt, key}",
        )
    })?;
    let (name, body) = entries
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str()?;
            Some((generation(name, &target.context)?, name, v))
        })
        .max_by_key(|(generation, _, _)| *generation)
        .map(|(_, name, body)| (name, body))
        .ok_or_else(|| {
            at(
                contexts,
                &format!(
                    "no context named \"{0}\" or \"{0}-N\"; create it with `talosctl cluster create --name {0}` \
                     or set [talosconfig] context",
                    target.context
                ),
            )
        })?;
    if body.entries().is_none() {
        return Err(at(
            body,
            &format!("`contexts.{name}`: expected a mapping with endpoints, nodes, ca, crt, key"),
        ));
    }
    let previous_endpoints = body
        .get("endpoints")
        .and_then(Node::items)
        .map(|items| {
            items
                .iter()
                .filter_map(Node::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    let mut editor = Editor::new(text, root.clone());
    let path = [key("contexts"), key(name)];
    let endpoints = vec![target.endpoint.clone()];
    let nodes = vec![target.node.clone()];
    match body.get("endpoints") {
        Some(_) => editor.set_list(&[key("contexts"), key(name), key("endpoints")], &endpoints)?,
        None => editor.insert_entry(&path, "endpoints", NewValue::List(endpoints), Place::First)?,
    }
    match body.get("nodes") {
        Some(_) => editor.set_list(&[key("contexts"), key(name), key("nodes")], &nodes)?,
        // talosctl's own order: endpoints, nodes, ca, crt, key.
        None => editor.insert_entry(
            &path,
            "nodes",
            NewValue::List(nodes),
            Place::After("endpoints"),
        )?,
    }
    let mut warnings = Vec::new();
    if let Some(current) = root.get("context").and_then(Node::as_str)
        && current != name
        && generation(current, &target.context).is_some()
    {
        warnings.push(format!(
            "context: \"{current}\" is an older generation; talosctl uses it, not the rewritten \"{name}\" \
             (`talosctl config context {name}`)"
        ));
    }
    let changed = editor.changed();
    Ok(Edited {
        text: editor.finish()?,
        changed,
        report: TalosReport {
            context: name.to_string(),
            previous_endpoints,
            warnings,
        },
    })
}
