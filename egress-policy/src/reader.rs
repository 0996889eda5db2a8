//! Field-by-field reading of YAML nodes, with diagnostics that name file, line and field.

use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::yaml::{Entry, Node, Value};

/// Reads fields of one resource and records what is wrong with them.
pub(crate) struct Reader<'d> {
    pub(crate) file: Arc<str>,
    pub(crate) resource: Option<Arc<str>>,
    pub(crate) diags: &'d mut Diagnostics,
    /// Errors that hold only where the resource applies to this gateway's own traffic
    /// (see [`crate::model::DestinationPolicy::mesh_only`]); its reader takes them.
    pub(crate) deferred: Vec<Diagnostic>,
    /// Where Kubernetes Secrets named by `credentialName` are mounted (`--credentials`).
    pub(crate) credentials: Option<Arc<std::path::Path>>,
}

/// The entries of one mapping; keys not taken are reported by [`Fields::finish`].
pub(crate) struct Fields<'n> {
    entries: &'n [Entry],
    used: Vec<bool>,
    path: String,
}

impl<'n> Fields<'n> {
    /// The value of `key`, marking it as read.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'n Node> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        self.used[i] = true;
        Some(&self.entries[i].value)
    }

    /// Whether `key` is present (read or not).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }

    /// The path of a field below this mapping.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Warns about every key not taken: `unsupported` keys are Istio fields this gateway does
    /// not implement yet; anything else is unknown (a typo, or a field of a newer Istio).
    pub(crate) fn finish(self, r: &mut Reader<'_>, unsupported: &[&str]) {
        for (e, used) in self.entries.iter().zip(self.used.iter().copied()) {
            if used {
                continue;
            }
            let path = self.path_of(&e.key);
            let message = if unsupported.contains(&e.key.as_str()) {
                "field is not supported by this gateway yet, ignored".to_owned()
            } else {
                "unknown field, ignored".to_owned()
            };
            r.push(Severity::Warning, e.line, e.col, path, message);
        }
    }

    /// Marks every key as read (for mappings whose content is free-form, like labels).
    pub(crate) fn ignore_rest(self) {}

    fn path_of(&self, key: &str) -> String {
        self.path(key)
    }

    // Field-path helpers: take a key and read it as one type, with the field's path in any
    // diagnostic, so a reader names each field once.

    /// `key` as a string, if present.
    pub(crate) fn string(&mut self, r: &mut Reader<'_>, key: &str) -> Option<String> {
        let n = self.take(key)?;
        r.string(n, &self.path(key))
    }

    /// `key` as a list of strings (empty when absent).
    pub(crate) fn strings(&mut self, r: &mut Reader<'_>, key: &str) -> Vec<String> {
        match self.take(key) {
            Some(n) => r.strings(n, &self.path(key)),
            None => Vec::new(),
        }
    }

    /// `key` as a map of strings (empty when absent).
    pub(crate) fn string_map(&mut self, r: &mut Reader<'_>, key: &str) -> Vec<(String, String)> {
        match self.take(key) {
            Some(n) => r.string_map(n, &self.path(key)),
            None => Vec::new(),
        }
    }

    /// `key` as a boolean, if present.
    pub(crate) fn boolean(&mut self, r: &mut Reader<'_>, key: &str) -> Option<bool> {
        let n = self.take(key)?;
        r.boolean(n, &self.path(key))
    }

    /// `key` as an unsigned integer within `min..=max`, if present.
    pub(crate) fn uint(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let n = self.take(key)?;
        r.uint(n, &self.path(key), min, max)
    }

    /// `key` read by `read` at its path, if present.
    pub(crate) fn read<T>(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
        read: impl FnOnce(&mut Reader<'_>, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        let n = self.take(key)?;
        read(r, n, &self.path(key))
    }

    /// Every item of the list `key` read by `read` (empty when absent); items that do not
    /// read are left out, their errors reported.
    pub(crate) fn read_list<T>(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
        mut read: impl FnMut(&mut Reader<'_>, &'n Node, &str) -> Option<T>,
    ) -> Vec<T> {
        self.list(r, key)
            .into_iter()
            .filter_map(|(n, p)| read(r, n, &p))
            .collect()
    }

    /// `key` as a duration (`5s`, `1.5m`, `0s`), if present.
    pub(crate) fn duration(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
    ) -> Option<std::time::Duration> {
        let n = self.take(key)?;
        r.duration(n, &self.path(key))
    }

    /// `key` as a duration above zero, if present.
    pub(crate) fn positive_duration(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
    ) -> Option<std::time::Duration> {
        let n = self.take(key)?;
        r.positive_duration(n, &self.path(key))
    }

    /// `key` as a list of nodes (empty when absent), each with its path.
    pub(crate) fn list(&mut self, r: &mut Reader<'_>, key: &str) -> Vec<(&'n Node, String)> {
        let Some(n) = self.take(key) else {
            return Vec::new();
        };
        let path = self.path(key);
        r.list(n, &path)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{path}[{i}]")))
            .collect()
    }
}

impl Reader<'_> {
    pub(crate) fn push(
        &mut self,
        severity: Severity,
        line: u32,
        col: u32,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            col,
            resource: self.resource.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn error(&mut self, at: &Node, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Severity::Error, at.line, at.col, field, msg);
    }

    /// An error kept aside for the resource being read to carry (see [`Reader::deferred`]).
    pub(crate) fn defer_error(
        &mut self,
        at: &Node,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.deferred.push(Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            line: at.line,
            col: at.col,
            resource: self.resource.clone(),
            field: field.into(),
            message: msg.into(),
        });
    }

    pub(crate) fn warn(&mut self, at: &Node, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Severity::Warning, at.line, at.col, field, msg);
    }

    fn wrong_type(&mut self, node: &Node, path: &str, want: &str) {
        let got = node.type_name();
        self.error(node, path, format!("expected {want}, got {got}"));
    }

    /// A mapping (null reads as an empty one).
    pub(crate) fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                entries,
                used: vec![false; entries.len()],
                path: path.to_owned(),
            }),
            Value::Null => Some(Fields {
                entries: &[],
                used: Vec::new(),
                path: path.to_owned(),
            }),
            _ => {
                self.wrong_type(node, path, "a map");
                None
            }
        }
    }

    /// A list (null reads as an empty one).
    pub(crate) fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    /// A string. Plain scalars that look like numbers or booleans are taken as text, as
    /// Kubernetes' YAML-to-JSON conversion would not, but as users mean them.
    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A list of strings.
    pub(crate) fn strings(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &format!("{path}[{i}]")))
            .collect()
    }

    /// A map of strings to strings (labels).
    pub(crate) fn string_map(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let Some(fields) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in fields.entries {
            if let Some(v) = self.string(&e.value, &format!("{path}.{}", e.key)) {
                out.push((e.key.clone(), v));
            }
        }
        fields.ignore_rest();
        out
    }

    /// An unsigned integer within `min..=max`. Quoted numbers are refused, as protobuf's
    /// JSON mapping for uint32 fields would in Istio's validation webhook.
    pub(crate) fn uint(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let Value::Scalar { text, plain } = &node.value else {
            self.wrong_type(node, path, "a number");
            return None;
        };
        let parsed = if *plain {
            text.parse::<u64>().ok()
        } else {
            None
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(node, path, format!("{n} is out of range {min}..={max}"));
                None
            }
            None => {
                let what = if *plain { "" } else { " (quoted)" };
                self.error(node, path, format!("expected a number, got {text:?}{what}"));
                None
            }
        }
    }

    /// A duration (`5s`, `1.5m`, `0s`).
    pub(crate) fn duration(&mut self, node: &Node, path: &str) -> Option<std::time::Duration> {
        let s = self.string(node, path)?;
        match crate::duration::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node, path, e);
                None
            }
        }
    }

    /// A duration above zero.
    pub(crate) fn positive_duration(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<std::time::Duration> {
        let s = self.string(node, path)?;
        match crate::duration::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.error(node, path, format!("{s:?} is not a positive duration"));
                None
            }
        }
    }

    /// A number (integer or decimal) within `min..=max`.
    pub(crate) fn float(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<f64> {
        let Value::Scalar { text, plain: true } = &node.value else {
            self.wrong_type(node, path, "a number");
            return None;
        };
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() && (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.error(node, path, format!("{n} is out of range {min}..={max}"));
                None
            }
            Err(_) => {
                self.error(node, path, format!("expected a number, got {text:?}"));
                None
            }
        }
    }

    /// A boolean.
    pub(crate) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar { text, plain: true } if text == "true" => Some(true),
            Value::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                self.wrong_type(node, path, "true or false");
                None
            }
        }
    }

    /// One of a fixed set of names (protobuf enum values), matched exactly.
    pub(crate) fn one_of(
        &mut self,
        node: &Node,
        path: &str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.string(node, path)?;
        match allowed.iter().find(|a| **a == s) {
            Some(a) => Some(a),
            None => {
                self.error(
                    node,
                    path,
                    format!(
                        "invalid value {s:?} (expected one of {})",
                        allowed.join(", ")
                    ),
                );
                None
            }
        }
    }
}
