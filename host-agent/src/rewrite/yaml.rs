//! A YAML document as a tree of nodes that remember where they sit in the
//! source bytes, so edits can splice new text into the original and leave
//! every other byte (comments, quoting, indentation) alone.

use std::ops::Range;

use granit_parser::{Event, Parser, ScalarStyle, Span, StructureStyle};

/// Where in the source a problem is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct YamlError {
    /// 1-based.
    pub line: usize,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// Byte range of the node's own text. For block collections this is
    /// only their start; use [`Node::content_end`] for where they end.
    pub span: Range<usize>,
    /// 1-based line and 0-based column (in characters) of the start.
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Scalar {
        value: String,
        plain: bool,
    },
    Seq {
        items: Vec<Node>,
        flow: bool,
    },
    Map {
        entries: Vec<(Node, Node)>,
        flow: bool,
    },
    Alias(usize),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A plain empty scalar (`key:` with nothing after it) or `~`/`null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map { entries, .. } => Some(entries),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq { items, .. } => Some(items),
            _ => None,
        }
    }

    /// Index of the first entry whose key is the plain or quoted string `key`.
    pub fn entry_index(&self, key: &str) -> Option<usize> {
        self.entries()?
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        let i = self.entry_index(key)?;
        self.entries().map(|e| &e[i].1)
    }

    /// Where the node's last character ends: the end of its last scalar, or
    /// of the closing bracket of a flow collection.
    pub fn content_end(&self) -> usize {
        match &self.kind {
            Kind::Scalar { .. } | Kind::Alias(_) => self.span.end,
            Kind::Seq { flow: true, .. } | Kind::Map { flow: true, .. } => self.span.end,
            Kind::Seq { items, .. } => items
                .last()
                .map_or(self.span.end, |n| n.content_end().max(self.span.end)),
            Kind::Map { entries, .. } => entries.last().map_or(self.span.end, |(k, v)| {
                k.content_end().max(v.content_end()).max(self.span.end)
            }),
        }
    }

    /// Same data, ignoring positions and presentation (except that a plain
    /// scalar differs from a quoted one: `true` is not `"true"`).
    pub fn same_as(&self, other: &Node) -> bool {
        match (&self.kind, &other.kind) {
            (
                Kind::Scalar {
                    value: a,
                    plain: pa,
                },
                Kind::Scalar {
                    value: b,
                    plain: pb,
                },
            ) => a == b && pa == pb,
            (Kind::Seq { items: a, .. }, Kind::Seq { items: b, .. }) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
            }
            (Kind::Map { entries: a, .. }, Kind::Map { entries: b, .. }) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka.same_as(kb) && va.same_as(vb))
            }
            (Kind::Alias(a), Kind::Alias(b)) => a == b,
            _ => false,
        }
    }
}

/// Parse a single-document YAML text. An empty (or comments-only) text is
/// `Ok(None)`.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder::default();
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line(),
            problem: e.info(),
        })?;
        let at = position(&span)?;
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        line: span.start.line(),
                        problem: "expected one YAML document, found a second one".into(),
                    });
                }
            }
            Event::Scalar(value, style, _, _) => builder.push(Node {
                kind: Kind::Scalar {
                    value: value.into_owned(),
                    plain: style == ScalarStyle::Plain,
                },
                span: at,
                line: span.start.line(),
                col: span.start.col(),
            }),
            Event::Alias(id) => builder.push(Node {
                kind: Kind::Alias(id),
                span: at,
                line: span.start.line(),
                col: span.start.col(),
            }),
            Event::SequenceStart(style, _, _) => builder.open(Node {
                kind: Kind::Seq {
                    items: Vec::new(),
                    flow: style == StructureStyle::Flow,
                },
                span: at,
                line: span.start.line(),
                col: span.start.col(),
            }),
            Event::MappingStart(style, _, _) => builder.open(Node {
                kind: Kind::Map {
                    entries: Vec::new(),
                    flow: style == StructureStyle::Flow,
                },
                span: at,
                line: span.start.line(),
                col: span.start.col(),
            }),
            Event::SequenceEnd | Event::MappingEnd => builder.close(at.end)?,
            _ => {}
        }
    }
    Ok(builder.root)
}

fn position(span: &Span) -> Result<Range<usize>, YamlError> {
    span.byte_range().ok_or_else(|| YamlError {
        line: span.start.line(),
        problem: "parser gave no byte offsets".into(),
    })
}

#[derive(Default)]
struct Builder {
    /// Open collections, and for maps the key waiting for its value.
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
}

impl Builder {
    fn open(&mut self, node: Node) {
        self.stack.push((node, None));
    }

    fn close(&mut self, end: usize) -> Result<(), YamlError> {
        let (mut node, pending_key) = self.stack.pop().ok_or_else(|| YamlError {
            line: 0,
            problem: "unbalanced collection end".into(),
        })?;
        if pending_key.is_some() {
            return Err(YamlError {
                line: node.line,
                problem: "mapping key without a value".into(),
            });
        }
        if matches!(
            node.kind,
            Kind::Seq { flow: true, .. } | Kind::Map { flow: true, .. }
        ) {
            node.span.end = end;
        }
        self.push(node);
        Ok(())
    }

    fn push(&mut self, node: Node) {
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match &mut parent.kind {
            Kind::Seq { items, .. } => items.push(node),
            Kind::Map { entries, .. } => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => *pending_key = Some(node),
            },
            Kind::Scalar { .. } | Kind::Alias(_) => {}
        }
    }
}

/// Render `value` as a YAML string scalar: plain when that reads back as
/// the same string, double-quoted otherwise.
pub fn render_string(value: &str) -> (String, bool) {
    if plain_is_string(value) {
        (value.to_string(), true)
    } else {
        (double_quoted(value), false)
    }
}

/// `value` as a double-quoted scalar (JSON string escapes are valid YAML).
pub fn double_quoted(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

fn plain_is_string(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let ambiguous = matches!(
        s.to_ascii_lowercase().as_str(),
        "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    ) || s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o");
    !ambiguous
        && !"-?:,[]{}#&*!|>'\"%@`".contains(first)
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && !s.chars().any(|c| c.is_control() || c == '\t')
        && s.trim() == s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_scalars_including_quotes() {
        let text = "a: \"x\"\nb:\n  - 1\n  - [2, 3]\n";
        let root = parse(text).unwrap().unwrap();
        let a = root.get("a").unwrap();
        assert_eq!(&text[a.span.clone()], "\"x\"");
        assert_eq!(a.as_str(), Some("x"));
        let b = root.get("b").unwrap();
        assert_eq!(&text[..b.content_end()], "a: \"x\"\nb:\n  - 1\n  - [2, 3]");
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn plain_true_is_not_quoted_true() {
        let a = parse("k: true").unwrap().unwrap();
        let b = parse("k: \"true\"").unwrap().unwrap();
        let c = parse("k:   true # c").unwrap().unwrap();
        assert!(!a.same_as(&b));
        assert!(a.same_as(&c));
    }

    #[test]
    fn strings_that_would_read_back_differently_are_quoted() {
        for s in ["true", "1.5", "", "- x", "a: b", "null", "0x1f", " x"] {
            let (text, plain) = render_string(s);
            assert!(!plain, "{s}");
            let back = parse(&format!("k: {text}")).unwrap().unwrap();
            assert_eq!(back.get("k").unwrap().as_str(), Some(s));
        }
        assert_eq!(
            render_string("https://127.0.0.1:16443"),
            ("https://127.0.0.1:16443".into(), true)
        );
        assert_eq!(render_string("10.5.0.2"), ("10.5.0.2".into(), true));
    }

    #[test]
    fn a_second_document_is_refused() {
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
