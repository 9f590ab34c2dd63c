//! Targeted edits of a YAML text: each operation splices new bytes into the
//! original and applies the same change to an expected tree; `finish`
//! re-parses the result and refuses it unless it equals that tree, so an
//! edit can never change more than it meant to.

use std::ops::Range;

pub use super::path::{Step, at, key};
use super::path::{resolve, resolve_mut};
use super::yaml::{self, Kind, Node, YamlError};

/// The value of a new mapping entry.
pub enum NewValue {
    /// A string, quoted when needed.
    String(String),
    /// Written as is as a plain scalar, e.g. the boolean `true`.
    Literal(String),
    /// A list of strings, written in flow style `[a, b]`.
    List(Vec<String>),
}

/// Where a new mapping entry goes.
pub enum Place<'k> {
    First,
    After(&'k str),
}

pub struct Editor<'t> {
    text: &'t str,
    original: Node,
    expected: Node,
    splices: Vec<(Range<usize>, String)>,
}

impl<'t> Editor<'t> {
    pub fn new(text: &'t str, root: Node) -> Self {
        Editor {
            text,
            expected: root.clone(),
            original: root,
            splices: Vec::new(),
        }
    }

    pub fn changed(&self) -> bool {
        !self.splices.is_empty()
    }

    /// Set the scalar at `path` to the string `value` (or, when `literal`,
    /// to `value` written as a plain scalar, e.g. the boolean `true`).
    pub fn set_scalar(
        &mut self,
        path: &[Step],
        value: &str,
        literal: bool,
    ) -> Result<(), YamlError> {
        let node = resolve(&self.original, path)?;
        let was_quoted = matches!(node.kind, Kind::Scalar { plain: false, .. });
        let (text, plain) = if literal {
            (value.to_string(), true)
        } else if was_quoted {
            // Keep the quoting, so a JSON kubeconfig stays JSON.
            (yaml::double_quoted(value), false)
        } else {
            yaml::render_string(value)
        };
        if let Kind::Scalar {
            value: old,
            plain: old_plain,
        } = &node.kind
        {
            if old == value && *old_plain == plain {
                return Ok(());
            }
        } else {
            return Err(at(node, "expected a single value here"));
        }
        let span = node.span.clone();
        self.replace_value(span, text);
        *resolve_mut(&mut self.expected, path)? = scalar(value, plain);
        Ok(())
    }

    /// Make the node at `path` the list of strings `values`.
    pub fn set_list(&mut self, path: &[Step], values: &[String]) -> Result<(), YamlError> {
        let node = resolve(&self.original, path)?.clone();
        let rendered: Vec<(String, bool)> = values.iter().map(|v| yaml::render_string(v)).collect();
        let wanted = Node {
            kind: Kind::Seq {
                items: values
                    .iter()
                    .zip(&rendered)
                    .map(|(v, (_, plain))| scalar(v, *plain))
                    .collect(),
                flow: true,
            },
            ..node.clone()
        };
        if node.same_as(&wanted) {
            return Ok(());
        }
        let flow = || {
            let parts: Vec<&str> = rendered.iter().map(|(t, _)| t.as_str()).collect();
            format!("[{}]", parts.join(", "))
        };
        match &node.kind {
            Kind::Seq { items, flow: false } if items.len() == values.len() => {
                for (i, v) in values.iter().enumerate() {
                    let mut item = path.to_vec();
                    item.push(Step::Index(i));
                    self.set_scalar(&item, v, false)?;
                }
                return Ok(());
            }
            Kind::Seq { items, flow: false } if !values.is_empty() => {
                let first = items.first().ok_or_else(|| at(&node, "empty block list"))?;
                let start = line_start(self.text, first.span.start);
                let prefix = &self.text[start..first.span.start];
                if prefix.trim() != "-" {
                    return Err(at(first, "expected one `- item` per line"));
                }
                let end = line_end(self.text, node.content_end());
                let mut lines: String = rendered
                    .iter()
                    .map(|(t, _)| format!("{prefix}{t}\n"))
                    .collect();
                if !self.text[..end].ends_with('\n') {
                    lines.pop();
                }
                self.splices.push((start..end, lines));
            }
            Kind::Seq { .. } => self.splices.push((node.span.clone(), flow())),
            Kind::Scalar { .. } if node.is_null() => self.replace_value(node.span.clone(), flow()),
            _ => return Err(at(&node, "expected a list")),
        }
        *resolve_mut(&mut self.expected, path)? = wanted;
        Ok(())
    }

    /// Add `key: value` to the block mapping at `map`, on its own line at
    /// the mapping's indentation.
    pub fn insert_entry(
        &mut self,
        map: &[Step],
        key: &str,
        value: NewValue,
        place: Place<'_>,
    ) -> Result<(), YamlError> {
        let node = resolve(&self.original, map)?.clone();
        let Kind::Map { entries, flow } = &node.kind else {
            return Err(at(
                &node,
                "expected a mapping (`key: value` lines or `{...}`)",
            ));
        };
        if *flow {
            return self.insert_flow_entry(map, &node, key, value, place);
        }
        let (first_key, _) = entries.first().ok_or_else(|| at(&node, "empty mapping"))?;
        let (value_text, value_node) = match value {
            NewValue::String(v) => {
                let (text, plain) = yaml::render_string(&v);
                (text, scalar(&v, plain))
            }
            NewValue::Literal(v) => (v.clone(), scalar(&v, true)),
            NewValue::List(values) => {
                let rendered: Vec<(String, bool)> =
                    values.iter().map(|v| yaml::render_string(v)).collect();
                let parts: Vec<&str> = rendered.iter().map(|(t, _)| t.as_str()).collect();
                let items = values
                    .iter()
                    .zip(&rendered)
                    .map(|(v, (_, plain))| scalar(v, *plain))
                    .collect();
                let node = Node {
                    kind: Kind::Seq { items, flow: true },
                    ..scalar("", true)
                };
                (format!("[{}]", parts.join(", ")), node)
            }
        };
        let (key_text, key_plain) = yaml::render_string(key);
        let indent = " ".repeat(first_key.col);
        let line = match (&value_node.kind, self.sibling_list_prefix(entries)) {
            // Write a list the way its siblings are written (talosctl's
            // `endpoints:` then `    - item` lines).
            (Kind::Seq { items, .. }, Some(prefix)) if !items.is_empty() => {
                let mut line = format!("{indent}{key_text}:\n");
                for item in items {
                    let (text, _) = yaml::render_string(item.as_str().unwrap_or_default());
                    line.push_str(&format!("{prefix}{text}\n"));
                }
                line
            }
            _ => format!("{indent}{key_text}: {value_text}\n"),
        };
        let first_start = line_start(self.text, first_key.span.start);
        let first_on_own_line = self.text[first_start..first_key.span.start]
            .trim()
            .is_empty();
        let after = match place {
            Place::After(k) => node.entry_index(k),
            Place::First if first_on_own_line => None,
            Place::First => Some(0),
        };
        let pos = match after {
            None if matches!(place, Place::First) => first_start,
            None => line_end(self.text, node.content_end()),
            Some(i) => line_end(self.text, entries[i].1.content_end()),
        };
        let text = if pos > 0 && !self.text[..pos].ends_with('\n') {
            format!("\n{}", line.trim_end_matches('\n'))
        } else {
            line
        };
        self.splices.push((pos..pos, text));
        let key_node = scalar(key, key_plain);
        let expected = resolve_mut(&mut self.expected, map)?;
        // The expected tree may already hold earlier inserts: place this one
        // by the key it follows there.
        let len = expected.entries().map_or(0, <[_]>::len);
        let first_key_name = first_key.as_str().unwrap_or_default();
        let index = match (&place, after) {
            (Place::After(k), Some(_)) => expected.entry_index(k).map_or(len, |i| i + 1),
            (Place::After(_), None) => len,
            (Place::First, Some(_)) => expected.entry_index(first_key_name).map_or(1, |i| i + 1),
            (Place::First, None) => 0,
        };
        if let Kind::Map { entries, .. } = &mut expected.kind {
            entries.insert(index, (key_node, value_node));
        }
        Ok(())
    }

    /// Add `"key": value` to the flow mapping (a JSON object) at `map`,
    /// written as JSON (double-quoted strings), so a JSON kubeconfig stays
    /// JSON: before the first entry (on its own line when that entry is),
    /// after the entry `place` names, or into an empty `{}`.
    fn insert_flow_entry(
        &mut self,
        map: &[Step],
        node: &Node,
        key: &str,
        value: NewValue,
        place: Place<'_>,
    ) -> Result<(), YamlError> {
        let json = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"));
        let (value_text, value_node) = match value {
            NewValue::String(v) => (json(&v), scalar(&v, false)),
            NewValue::Literal(v) => (v.clone(), scalar(&v, true)),
            NewValue::List(values) => {
                let parts: Vec<String> = values.iter().map(|v| json(v)).collect();
                let items = values.iter().map(|v| scalar(v, false)).collect();
                let node = Node {
                    kind: Kind::Seq { items, flow: true },
                    ..scalar("", true)
                };
                (format!("[{}]", parts.join(", ")), node)
            }
        };
        let entry = format!("{}: {value_text}", json(key));
        let entries = node.entries().unwrap_or_default();
        let after = match place {
            Place::After(k) => node.entry_index(k),
            Place::First => None,
        };
        let (pos, text) = match (entries.first(), after) {
            (None, _) => (node.span.start + 1, entry),
            (Some(_), Some(i)) => {
                let (k, v) = &entries[i];
                let gap = self.flow_gap(k.span.start);
                (v.content_end(), format!(",{gap}{entry}"))
            }
            (Some((first, _)), None) => {
                let gap = self.flow_gap(first.span.start);
                (first.span.start, format!("{entry},{gap}"))
            }
        };
        if !self.text.is_char_boundary(pos) || pos > self.text.len() {
            return Err(at(
                node,
                "cannot find where to add an entry to this `{...}`",
            ));
        }
        self.splices.push((pos..pos, text));
        let expected = resolve_mut(&mut self.expected, map)?;
        let len = expected.entries().map_or(0, <[_]>::len);
        let index = match (&place, after) {
            (Place::After(k), Some(_)) => expected.entry_index(k).map_or(len, |i| i + 1),
            (Place::After(_), None) => len,
            (Place::First, _) => 0,
        };
        if let Kind::Map { entries, .. } = &mut expected.kind {
            entries.insert(index, (scalar(key, false), value_node));
        }
        Ok(())
    }

    /// What separates entries of a flow mapping at a key starting at
    /// `key_start`: a newline and the key's indentation when the key is on
    /// its own line (pretty-printed JSON), else a space.
    fn flow_gap(&self, key_start: usize) -> String {
        let start = line_start(self.text, key_start);
        let before = &self.text[start..key_start];
        if before.trim().is_empty() {
            format!("\n{before}")
        } else {
            " ".into()
        }
    }

    /// Remove `key` and its value from the mapping at `map`.
    pub fn remove_entry(&mut self, map: &[Step], key: &str) -> Result<(), YamlError> {
        let node = resolve(&self.original, map)?.clone();
        let Some(i) = node.entry_index(key) else {
            return Ok(());
        };
        let entries = node.entries().unwrap_or_default();
        let (k, v) = &entries[i];
        if matches!(node.kind, Kind::Map { flow: true, .. }) {
            // JSON: the entry and one separating comma go.
            let range = if let Some((next, _)) = entries.get(i + 1) {
                k.span.start..next.span.start
            } else if i > 0 {
                entries[i - 1].1.content_end()..v.content_end()
            } else {
                k.span.start..v.content_end()
            };
            self.splices.push((range, String::new()));
            if let Kind::Map { entries, .. } = &mut resolve_mut(&mut self.expected, map)?.kind
                && let Some(j) = entries.iter().position(|(k, _)| k.as_str() == Some(key))
            {
                entries.remove(j);
            }
            return Ok(());
        }
        let start = line_start(self.text, k.span.start);
        let range = if self.text[start..k.span.start].trim().is_empty() {
            start..line_end(self.text, v.content_end())
        } else if let Some((next, _)) = entries.get(i + 1) {
            // `- key: v` opening a list item: the next key moves up.
            k.span.start..next.span.start
        } else {
            return Err(at(k, "cannot remove the only key of a list item"));
        };
        self.splices.push((range, String::new()));
        if let Kind::Map { entries, .. } = &mut resolve_mut(&mut self.expected, map)?.kind
            && let Some(j) = entries.iter().position(|(k, _)| k.as_str() == Some(key))
        {
            entries.remove(j);
        }
        Ok(())
    }

    /// Remove item `index` of the block sequence at `seq`. Removals shift
    /// the expected tree's indices: remove from the highest index down, after
    /// all other edits of that sequence.
    pub fn remove_item(&mut self, seq: &[Step], index: usize) -> Result<(), YamlError> {
        let node = resolve(&self.original, seq)?.clone();
        let Kind::Seq { items, flow: false } = &node.kind else {
            return Err(at(&node, "expected a block list (`- item` lines)"));
        };
        let item = items
            .get(index)
            .ok_or_else(|| at(&node, "no such list item"))?;
        if items.len() == 1 {
            return Err(at(item, "cannot remove the only item of a list"));
        }
        let start = line_start(self.text, item.span.start);
        if self.text[start..item.span.start].trim() != "-" {
            return Err(at(
                item,
                "expected `- ` to open the list item on its own line",
            ));
        }
        self.splices.push((
            start..line_end(self.text, item.content_end()),
            String::new(),
        ));
        if let Kind::Seq { items, .. } = &mut resolve_mut(&mut self.expected, seq)?.kind {
            items.remove(index);
        }
        Ok(())
    }

    /// Apply the splices, re-parse, and return the new text only if it
    /// holds exactly the expected data.
    pub fn finish(mut self) -> Result<String, YamlError> {
        if self.splices.is_empty() {
            return Ok(self.text.to_string());
        }
        self.splices.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut cursor = 0;
        for (range, new) in &self.splices {
            if range.start < cursor {
                return Err(YamlError {
                    line: line_of(self.text, range.start),
                    problem: "internal: overlapping edits".into(),
                });
            }
            out.push_str(&self.text[cursor..range.start]);
            out.push_str(new);
            cursor = range.end;
        }
        out.push_str(&self.text[cursor..]);
        let reparsed = yaml::parse(&out)
            .map_err(|e| YamlError {
                line: e.line,
                problem: format!(
                    "refusing to write: the edited text does not parse ({})",
                    e.problem
                ),
            })?
            .ok_or_else(|| YamlError {
                line: 1,
                problem: "refusing to write: the edited text is empty".into(),
            })?;
        if !reparsed.same_as(&self.expected) {
            return Err(YamlError {
                line: self
                    .splices
                    .first()
                    .map_or(1, |(r, _)| line_of(self.text, r.start)),
                problem: "refusing to write: the edit would change more than the intended values \
                          (unusual formatting here?)"
                    .into(),
            });
        }
        Ok(out)
    }

    /// The `    - ` prefix of the first block list among `entries`' values,
    /// when it is on its own line.
    fn sibling_list_prefix(&self, entries: &[(Node, Node)]) -> Option<String> {
        entries.iter().find_map(|(_, v)| match &v.kind {
            Kind::Seq { items, flow: false } => {
                let first = items.first()?;
                let prefix = &self.text[line_start(self.text, first.span.start)..first.span.start];
                (prefix.trim() == "-").then(|| prefix.to_string())
            }
            _ => None,
        })
    }

    /// Replace a value's text. The parser places an empty null (`key:`)
    /// at the colon: insert after it, with a space.
    fn replace_value(&mut self, mut span: Range<usize>, text: String) {
        if span.is_empty() && self.text[span.start..].starts_with(':') {
            span = span.start + 1..span.start + 1;
        }
        let text = if span.is_empty() && self.text[..span.start].ends_with(':') {
            format!(" {text}")
        } else {
            text
        };
        self.splices.push((span, text));
    }
}

fn scalar(value: &str, plain: bool) -> Node {
    Node {
        kind: Kind::Scalar {
            value: value.to_string(),
            plain,
        },
        span: 0..0,
        line: 0,
        col: 0,
    }
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// Just past the newline ending the line that `pos` is on (or that ends
/// right before `pos`).
fn line_end(text: &str, pos: usize) -> usize {
    if pos > 0 && text[..pos].ends_with('\n') {
        return pos;
    }
    text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1)
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos].matches('\n').count() + 1
}

#[cfg(test)]
#[path = "edit_tests.rs"]
mod tests;
