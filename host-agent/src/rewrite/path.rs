//! Addressing a node in the tree: `clusters[2].cluster.server`.

use super::yaml::{Kind, Node, YamlError};

/// One step from a node to a child: a mapping key or a sequence index.
#[derive(Debug, Clone)]
pub enum Step {
    Key(String),
    Index(usize),
}

pub fn key(k: &str) -> Step {
    Step::Key(k.to_string())
}

pub fn resolve<'n>(root: &'n Node, path: &[Step]) -> Result<&'n Node, YamlError> {
    let mut node = root;
    for step in path {
        node = match step {
            Step::Key(k) => node.get(k),
            Step::Index(i) => node.items().and_then(|items| items.get(*i)),
        }
        .ok_or_else(|| at(node, &format!("internal: no {step:?} here")))?;
    }
    Ok(node)
}

pub(super) fn resolve_mut<'n>(
    root: &'n mut Node,
    path: &[Step],
) -> Result<&'n mut Node, YamlError> {
    let mut node = root;
    for step in path {
        let (line, col) = (node.line, node.col);
        let next = match (step, &mut node.kind) {
            (Step::Key(k), Kind::Map { entries, .. }) => entries
                .iter_mut()
                .find(|(key, _)| key.as_str() == Some(k.as_str()))
                .map(|(_, v)| v),
            (Step::Index(i), Kind::Seq { items, .. }) => items.get_mut(*i),
            _ => None,
        };
        node = next.ok_or_else(|| YamlError {
            line,
            problem: format!("internal: no {step:?} at column {col}"),
        })?;
    }
    Ok(node)
}

pub fn at(node: &Node, problem: &str) -> YamlError {
    YamlError {
        line: node.line,
        problem: problem.to_string(),
    }
}
