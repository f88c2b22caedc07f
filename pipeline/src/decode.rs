//! Small typed decoders over [`Node`]s that record diagnostics instead of
//! failing: every decoder returns `None` after reporting a problem, so callers
//! fall back to defaults and keep going to collect all errors.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{Diagnostic, Pos, suggestion};
use crate::duration::{bare_number_error, parse_duration, parse_memory};
use crate::expr::{ExprError, Template, parse_condition, parse_template};
use crate::keys::Table;
use crate::node::{Kind, Node};
use crate::scope::Scope;
use crate::spec::Spanned;
use crate::yaml::MAX_DEPTH;

/// Collects diagnostics for one file.
pub(crate) struct Decoder<'f> {
    file: &'f str,
    pub(crate) diags: Vec<Diagnostic>,
}

/// The entries of a mapping that passed key checks against a [`Table`].
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n str, Node<'n>, Node<'n>)>,
    table: &'static Table,
}

impl<'n> Fields<'n> {
    /// The value of a declared key.
    pub(crate) fn get(&self, key: &str) -> Option<Node<'n>> {
        debug_assert!(self.table.has(key), "`{key}` is not in table `{}`", self.table.id);
        self.entries.iter().find(|(k, ..)| *k == key).map(|(_, _, v)| *v)
    }

    /// The position of a declared key, if present.
    pub(crate) fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries.iter().find(|(k, ..)| *k == key).map(|(_, k, _)| k.pos())
    }

    /// The free-form entries (keys not declared in the table), for tables with
    /// `extra` keys.
    pub(crate) fn extra(&self) -> Vec<(Spanned<String>, Node<'n>)> {
        self.entries
            .iter()
            .filter(|(k, ..)| !self.table.has(k))
            .map(|(k, kn, v)| (Spanned { value: (*k).to_owned(), pos: kn.pos() }, *v))
            .collect()
    }
}

/// Whether `s` is an identifier usable in expressions (`[A-Za-z_][A-Za-z0-9_-]*`).
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `s` is a valid environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_env_name(s: &str) -> bool {
    is_identifier(s) && !s.contains('-')
}

/// Whether `s` is a valid secret name: secrets reach jobs as environment
/// variables, so a secret name is an environment variable name. The one check
/// for every place the format names a secret (`secrets`, `credentials`,
/// `notify`).
pub(crate) fn is_secret_name(s: &str) -> bool {
    is_env_name(s)
}

/// The `${{ … }}` segment around `offset` (or the whole string).
fn segment_around(text: &str, offset: usize) -> std::ops::Range<usize> {
    let start = text.get(..offset).and_then(|t| t.rfind("${{")).unwrap_or(0);
    let end = text.get(offset..).and_then(|t| t.find("}}")).map_or(text.len(), |i| offset + i + 2);
    start..end
}

impl<'f> Decoder<'f> {
    /// A decoder for `file`.
    pub(crate) fn new(file: &'f str) -> Self {
        Decoder { file, diags: Vec::new() }
    }

    /// Records an error.
    pub(crate) fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, pos, message));
    }

    /// Records "expected X for `what`, found Y" at the node.
    pub(crate) fn mismatch(&mut self, node: Node<'_>, expected: &str, what: &str) {
        self.error(node.pos(), format!("expected {expected} for `{what}`, found {}", node.describe()));
    }

    /// Reads a mapping whose keys are described by `table`, reporting unknown
    /// keys (with suggestions), non-string keys, missing required keys and
    /// `exactly_one_of` violations. `null` is read as an empty mapping.
    /// `context` completes messages, e.g. "in job `test`"; problems with the
    /// mapping as a whole are reported at `at` (e.g. the job key), or at the
    /// mapping itself.
    pub(crate) fn fields<'n>(
        &mut self,
        node: Node<'n>,
        table: &'static Table,
        what: &str,
        context: &str,
        at: Option<Pos>,
    ) -> Option<Fields<'n>> {
        let at = at.unwrap_or_else(|| node.pos());
        let entries = if node.is_null() {
            Vec::new()
        } else if let Some(entries) = node.entries() {
            entries
        } else {
            self.mismatch(node, "a mapping", what);
            return None;
        };
        let mut fields = Fields { entries: Vec::new(), table };
        for (k, v) in entries {
            let Some(name) = k.as_str() else {
                self.error(k.pos(), format!("expected a string key {context}, found {}", k.describe()));
                continue;
            };
            if !table.has(name) && table.extra.is_none() {
                let names = table.names();
                self.error(
                    k.pos(),
                    format!(
                        "unknown key `{name}` {context}{} (expected one of: {})",
                        suggestion(name, names.clone()),
                        names.collect::<Vec<_>>().join(", ")
                    ),
                );
                continue;
            }
            fields.entries.push((name, k, v));
        }
        for spec in table.keys.iter().filter(|k| k.required) {
            if fields.get(spec.name).is_none() {
                self.error(at, format!("missing required key `{}` {context}", spec.name));
            }
        }
        if !table.exactly_one_of.is_empty() {
            let present = table.exactly_one_of.iter().filter(|k| fields.get(k).is_some()).count();
            if present != 1 {
                let list: Vec<String> = table.exactly_one_of.iter().map(|k| format!("`{k}`")).collect();
                self.error(at, format!("a {} must have exactly one of {}", table.id, list.join(" or ")));
            }
        }
        Some(fields)
    }

    /// Reads a mapping with free-form string keys (`null` = empty).
    pub(crate) fn named_entries<'n>(&mut self, node: Node<'n>, what: &str) -> Option<Vec<(Spanned<String>, Node<'n>)>> {
        if node.is_null() {
            return Some(Vec::new());
        }
        let Some(entries) = node.entries() else {
            self.mismatch(node, "a mapping", what);
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            match k.as_str() {
                Some(name) => out.push((Spanned { value: name.to_owned(), pos: k.pos() }, v)),
                None => self.error(k.pos(), format!("expected a string key in `{what}`, found {}", k.describe())),
            }
        }
        Some(out)
    }

    /// Reports `name` unless it is an identifier.
    pub(crate) fn check_identifier(&mut self, name: &Spanned<String>, what: &str) -> bool {
        let ok = is_identifier(&name.value);
        if !ok {
            self.error(
                name.pos,
                format!(
                    "invalid {what} `{}`: use letters, digits, `_` and `-`, starting with a letter or `_`",
                    name.value
                ),
            );
        }
        ok
    }

    /// Reports `name` unless it is a valid secret name ([`is_secret_name`]).
    pub(crate) fn check_secret_name(&mut self, name: &Spanned<String>) -> bool {
        let ok = is_secret_name(&name.value);
        if !ok {
            let hint =
                if name.value.contains("${{") { " (give the secret's name; `${{ }}` is not allowed here)" } else { "" };
            self.error(name.pos, format!("invalid secret name `{}`: use letters, digits and `_`{hint}", name.value));
        }
        ok
    }

    /// A string naming a secret ([`is_secret_name`]).
    pub(crate) fn secret_name(&mut self, node: Node<'_>, what: &str) -> Option<String> {
        let name = self.expect_str(node, what)?;
        self.check_secret_name(&Spanned { value: name.clone(), pos: node.pos() }).then_some(name)
    }

    /// A string.
    pub(crate) fn expect_str(&mut self, node: Node<'_>, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.mismatch(node, "a string", what);
                None
            }
        }
    }

    /// A boolean.
    pub(crate) fn expect_bool(&mut self, node: Node<'_>, what: &str) -> Option<bool> {
        match node.kind() {
            Kind::Bool(b) => Some(b),
            _ => {
                self.mismatch(node, "`true` or `false`", what);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int_in(&mut self, node: Node<'_>, what: &str, min: i64, max: i64) -> Option<i64> {
        match node.kind() {
            Kind::Int(i) if (min..=max).contains(&i) => Some(i),
            Kind::Int(i) => {
                self.error(node.pos(), format!("`{what}` must be between {min} and {max}, found {i}"));
                None
            }
            _ => {
                self.mismatch(node, &format!("an integer from {min} to {max}"), what);
                None
            }
        }
    }

    /// A string, number or boolean, as text.
    pub(crate) fn expect_scalar(&mut self, node: Node<'_>, what: &str) -> Option<String> {
        let text = node.scalar_text();
        if text.is_none() {
            self.mismatch(node, "a string, number or boolean", what);
        }
        text
    }

    /// A list of strings; with `single`, a lone string is accepted as a
    /// one-element list.
    pub(crate) fn str_list(&mut self, node: Node<'_>, what: &str, single: bool) -> Option<Vec<Spanned<String>>> {
        let expected = if single { "a string or a list of strings" } else { "a list of strings" };
        if single && let Some(s) = node.as_str() {
            return Some(vec![Spanned { value: s.to_owned(), pos: node.pos() }]);
        }
        let Some(items) = node.items() else {
            self.mismatch(node, expected, what);
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s) => out.push(Spanned { value: s.to_owned(), pos: item.pos() }),
                None => self.error(
                    item.pos(),
                    format!("expected {expected} for `{what}`, found a list containing {}", item.describe()),
                ),
            }
        }
        Some(out)
    }

    /// A positive duration such as `10m`.
    pub(crate) fn duration(&mut self, node: Node<'_>, what: &str) -> Option<Duration> {
        let parsed = match node.kind() {
            Kind::Str(s) => parse_duration(s),
            Kind::Int(i) => Err(bare_number_error(&i.to_string())),
            _ => {
                self.mismatch(node, "a duration such as 90s, 10m or 1h", what);
                return None;
            }
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.error(node.pos(), format!("`{what}` must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node.pos(), e);
                None
            }
        }
    }

    /// A positive memory size in bytes.
    pub(crate) fn memory(&mut self, node: Node<'_>, what: &str) -> Option<u64> {
        let parsed = match node.kind() {
            Kind::Int(i) => u64::try_from(i).map_err(|_| format!("invalid memory size `{i}`")),
            Kind::Str(s) => parse_memory(s),
            _ => {
                self.mismatch(node, "a memory size such as 512m or 2g", what);
                return None;
            }
        };
        match parsed {
            Ok(0) => {
                self.error(node.pos(), format!("`{what}` must be greater than zero"));
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.error(node.pos(), e);
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub(crate) fn word(&mut self, node: Node<'_>, what: &str, words: &[&'static str]) -> Option<&'static str> {
        let s = node.as_str();
        if let Some(w) = words.iter().find(|w| Some(**w) == s) {
            return Some(w);
        }
        let expected = words.join(", ");
        match s {
            Some(s) => self.error(
                node.pos(),
                format!(
                    "invalid value `{s}` for `{what}`{} (expected one of: {expected})",
                    suggestion(s, words.iter().copied())
                ),
            ),
            None => self.mismatch(node, &format!("one of: {expected}"), what),
        }
        None
    }

    /// A mapping of environment variables: names are checked, values are
    /// scalars (converted to strings) whose `${{ }}` segments are validated.
    pub(crate) fn env(&mut self, node: Node<'_>, what: &str, scope: &Scope<'_>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, value) in self.named_entries(node, what).unwrap_or_default() {
            if !is_env_name(&name.value) {
                self.error(
                    name.pos,
                    format!(
                        "invalid environment variable name `{}`: use letters, digits and `_`, not starting with a digit",
                        name.value
                    ),
                );
                continue;
            }
            if let Some(text) = self.expect_scalar(value, &name.value) {
                if value.as_str().is_some() {
                    self.check_template(value, &text, &name.value, scope);
                }
                out.insert(name.value, text);
            }
        }
        out
    }

    /// A string whose `${{ }}` segments are validated in `scope`.
    pub(crate) fn template(&mut self, node: Node<'_>, what: &str, scope: &Scope<'_>) -> Option<String> {
        // Text fields take any scalar as written: `run: true` is the shell
        // command `true`, `name: 1.10` is "1.10".
        let Some(text) = node.scalar_text() else {
            self.mismatch(node, "a string", what);
            return None;
        };
        self.check_template(node, &text, what, scope);
        Some(text)
    }

    /// Validates the `${{ }}` segments of `text` (the value of `node`).
    pub(crate) fn check_template(&mut self, node: Node<'_>, text: &str, what: &str, scope: &Scope<'_>) {
        match parse_template(text) {
            Ok(t) => self.check_references(node, text, &t, what, scope),
            Err(e) => self.expr_error(node, text, what, &e),
        }
    }

    fn check_references(&mut self, node: Node<'_>, text: &str, t: &Template, what: &str, scope: &Scope<'_>) {
        for expr in t.expressions() {
            for r in expr.references() {
                if let Err(msg) = scope.check(&r.path) {
                    let pos = node.locate(text, segment_around(text, r.offset), r.offset);
                    self.error(pos, format!("invalid expression in `{what}`: {msg}"));
                }
            }
        }
    }

    fn expr_error(&mut self, node: Node<'_>, text: &str, what: &str, e: &ExprError) {
        let pos = node.locate(text, segment_around(text, e.offset), e.offset);
        self.error(pos, format!("invalid expression in `{what}`: {}", e.message));
    }

    /// An `if:` condition (an expression with or without `${{ }}`, or a
    /// boolean), validated in `scope`.
    pub(crate) fn condition(&mut self, node: Node<'_>, scope: &Scope<'_>) -> Option<String> {
        let text = match node.kind() {
            Kind::Str(s) => s.to_owned(),
            Kind::Bool(b) => b.to_string(),
            _ => {
                self.mismatch(node, "an expression", "if");
                return None;
            }
        };
        match parse_condition(&text) {
            Ok(expr) => {
                for r in expr.references() {
                    if let Err(msg) = scope.check(&r.path) {
                        let pos = node.locate(&text, 0..text.len(), r.offset);
                        self.error(pos, format!("invalid expression in `if`: {msg}"));
                    }
                }
            }
            Err(e) => {
                let pos = node.locate(&text, 0..text.len(), e.offset);
                self.error(pos, format!("invalid expression in `if`: {}", e.message));
            }
        }
        Some(text)
    }

    /// A relative path without `..` components (e.g. `working_directory`).
    pub(crate) fn relative_path(&mut self, node: Node<'_>, path: &str, what: &str) -> bool {
        let problem = if path.trim().is_empty() {
            Some("must not be empty")
        } else if path.starts_with('/') || path.starts_with('\\') {
            Some("must be relative to the workspace (no leading `/`)")
        } else if path.split(['/', '\\']).any(|c| c == "..") {
            Some("must not contain `..`")
        } else {
            None
        };
        if let Some(p) = problem {
            self.error(node.pos(), format!("invalid path `{path}` for `{what}`: {p}"));
        }
        problem.is_none()
    }

    /// Converts an arbitrary YAML value (`with:`) to JSON, validating the
    /// `${{ }}` segments of its strings.
    pub(crate) fn json(
        &mut self,
        node: Node<'_>,
        what: &str,
        scope: &Scope<'_>,
        depth: usize,
    ) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        if depth > MAX_DEPTH {
            self.error(node.pos(), format!("`{what}` is nested too deeply"));
            return None;
        }
        Some(match node.kind() {
            Kind::Null => J::Null,
            Kind::Bool(b) => J::Bool(b),
            Kind::Int(i) => J::from(i),
            Kind::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => J::Number(n),
                None => {
                    self.error(node.pos(), format!("`{what}` contains a non-finite number"));
                    return None;
                }
            },
            Kind::Str(s) => {
                self.check_template(node, s, what, scope);
                J::String(s.to_owned())
            }
            Kind::Seq(_) => J::Array(
                node.items()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|item| self.json(item, what, scope, depth + 1))
                    .collect(),
            ),
            Kind::Map(_) => {
                let mut map = serde_json::Map::new();
                for (k, v) in self.named_entries(node, what).unwrap_or_default() {
                    if let Some(value) = self.json(v, what, scope, depth + 1) {
                        map.insert(k.value, value);
                    }
                }
                J::Object(map)
            }
            Kind::Invalid => {
                self.error(node.pos(), format!("invalid value in `{what}`"));
                return None;
            }
        })
    }
}
