//! A YAML tree that remembers where every node was written.
//!
//! Istio manifests are validated field by field and every error must name its line, so the
//! documents are read into this tree (through `yaml-rust2`'s event parser, which reports
//! positions) instead of straight into typed structs. Duplicate keys are an error: two readers
//! of one manifest could keep different values. Aliases are expanded with a cap, so a small
//! file cannot expand into a huge tree.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The most nodes aliases may add to one document: a few bytes of anchors and aliases
/// cannot become a huge tree (the "billion laughs"). Nodes written out are bounded by the
/// text itself, so a file of a million resources is not refused for its size.
const MAX_ALIAS_NODES: usize = 1_000_000;

/// A node and its position (1-based line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

/// A YAML value. Scalars stay text; the reader of a field decides its type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// A scalar; `plain` is false when it was quoted or a block scalar.
    Scalar {
        /// The text.
        text: String,
        /// Written without quotes.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order: key, key position, value.
    Map(Vec<Entry>),
}

/// One mapping entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key was written.
    pub line: u32,
    /// Where the key was written.
    pub col: u32,
    /// The value.
    pub value: Node,
}

/// A YAML syntax error with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct YamlError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
    /// What is wrong.
    pub message: String,
}

impl Node {
    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "scalar",
            Value::Seq(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

/// Parses every document of a (multi-document) YAML text. Empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut docs = Vec::new();
    for_each_document(text, |d| docs.push(d))?;
    Ok(docs)
}

/// Hands each non-empty document of a YAML text to `each` as soon as it is complete, so
/// that only one document's tree is in memory at a time; the first syntax error ends the
/// text (the documents before it have been handed over).
pub fn for_each_document(text: &str, mut each: impl FnMut(Node)) -> Result<(), YamlError> {
    let mut builder = Builder {
        each: &mut each,
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line() as u32,
        col: e.marker().col() as u32 + 1,
        message: e.info().to_owned(),
    })?;
    match builder.error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

enum Frame {
    Seq(Node, usize),
    Map(Node, usize, Option<(String, u32, u32)>),
}

struct Builder<'f> {
    each: &'f mut dyn FnMut(Node),
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    /// Nodes aliases added to the current document.
    alias_nodes: usize,
    error: Option<YamlError>,
}

impl Builder<'_> {
    fn fail(&mut self, mark: Marker, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                line: mark.line() as u32,
                col: mark.col() as u32 + 1,
                message: message.into(),
            });
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None if node.value == Value::Null => {}
            None => (self.each)(node),
            Some(Frame::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Frame::Map(map, _, pending)) => match pending.take() {
                None => {
                    let Value::Scalar { text, .. } = node.value else {
                        if matches!(node.value, Value::Null) {
                            *pending = Some((String::new(), node.line, node.col));
                            return;
                        }
                        return self.fail(mark, "mapping keys must be scalars");
                    };
                    *pending = Some((text, node.line, node.col));
                }
                Some((key, line, col)) => {
                    let Value::Map(entries) = &mut map.value else {
                        return;
                    };
                    if entries.iter().any(|e| e.key == key) {
                        let msg = format!("duplicate key {key:?}");
                        return self.fail_at(line, col, msg);
                    }
                    entries.push(Entry {
                        key,
                        line,
                        col,
                        value: node,
                    });
                }
            },
        }
    }

    fn fail_at(&mut self, line: u32, col: u32, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { line, col, message });
        }
    }

    fn count_alias(&mut self, node: &Node, mark: Marker) -> bool {
        self.alias_nodes += size(node);
        if self.alias_nodes > MAX_ALIAS_NODES {
            self.fail(mark, "document too large (alias expansion limit)");
            return false;
        }
        true
    }
}

fn size(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|e| size(&e.value)).sum::<usize>(),
        _ => 1,
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let at = |value| Node {
            value,
            line: mark.line() as u32,
            col: mark.col() as u32 + 1,
        };
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push_value(at(value), anchor, mark);
            }
            Event::SequenceStart(anchor, _) => self
                .stack
                .push(Frame::Seq(at(Value::Seq(Vec::new())), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack
                    .push(Frame::Map(at(Value::Map(Vec::new())), anchor, None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(n, a)) | Some(Frame::Map(n, a, _)) => (n, a),
                    None => return,
                };
                self.push_value(node, anchor, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    if self.count_alias(&node, mark) {
                        self.push_value(node, 0, mark);
                    }
                }
                None => self.fail(mark, "unknown alias"),
            },
            Event::DocumentEnd => {
                self.anchors.clear();
                self.alias_nodes = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_documents() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - 'y'\n---\n---\nc: ~\n").unwrap();
        assert_eq!(docs.len(), 2);
        let Value::Map(entries) = &docs[0].value else {
            panic!()
        };
        assert_eq!(entries[1].key, "b");
        assert_eq!((entries[1].line, entries[1].col), (2, 1));
        let Value::Seq(items) = &entries[1].value.value else {
            panic!()
        };
        assert_eq!(items[1].line, 4);
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn errors() {
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("duplicate key"), "{e}");
        let e = parse_documents("a: [1, 2\n").unwrap_err();
        assert!(e.line >= 1);
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        let e = parse_documents(bomb).unwrap_err();
        assert!(e.message.contains("too large"), "{e}");
    }

    /// The limit is on what aliases add to one document: a long file of plain documents
    /// (here 1.6 million nodes) is read, one document at a time.
    #[test]
    fn many_documents_are_not_too_large() {
        let doc = "kind: X\nmetadata: {name: a}\nspec: {a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n---\n";
        let text = doc.repeat(100_000);
        let mut n = 0;
        for_each_document(&text, |_| n += 1).unwrap();
        assert_eq!(n, 100_000);
    }
}
