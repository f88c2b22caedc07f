//! A thin, copyable wrapper over saphyr's [`MarkedYaml`] that exposes the
//! node kinds the decoders need, together with source positions.

use saphyr::{AnnotatedMapping, MarkedYaml, Scalar, YamlData};

use crate::diag::Pos;
use crate::yaml::marker_pos;

/// The original file text, used to recover raw scalar spellings and to map
/// offsets inside string values back to file positions.
pub(crate) struct Source<'a> {
    text: &'a str,
    ascii: bool,
}

impl<'a> Source<'a> {
    /// Wraps the file text.
    pub(crate) fn new(text: &'a str) -> Self {
        Source { text, ascii: text.is_ascii() }
    }

    /// Converts a character index (as used by saphyr markers) to a byte index.
    fn byte_index(&self, char_index: usize) -> usize {
        if self.ascii {
            return char_index.min(self.text.len());
        }
        self.text.char_indices().nth(char_index).map_or(self.text.len(), |(b, _)| b)
    }

    /// The text between two character indices (clamped to the file).
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let (s, e) = (self.byte_index(start), self.byte_index(end));
        self.text.get(s..e.max(s)).unwrap_or("")
    }
}

/// The shape of a node, with tags unwrapped.
pub(crate) enum Kind<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Seq(&'a [MarkedYaml<'a>]),
    Map(&'a AnnotatedMapping<'a, MarkedYaml<'a>>),
    /// A value saphyr could not represent (e.g. `!!int abc`, unknown alias).
    Invalid,
}

/// A YAML node plus the source it came from.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    y: &'a MarkedYaml<'a>,
    src: &'a Source<'a>,
}

impl<'a> Node<'a> {
    /// Wraps a loaded node.
    pub(crate) fn new(y: &'a MarkedYaml<'a>, src: &'a Source<'a>) -> Self {
        Node { y, src }
    }

    /// Where the node starts.
    pub(crate) fn pos(self) -> Pos {
        marker_pos(&self.y.span.start)
    }

    /// The node's shape.
    pub(crate) fn kind(self) -> Kind<'a> {
        let mut data = &self.y.data;
        while let YamlData::Tagged(_, inner) = data {
            data = &inner.data;
        }
        match data {
            YamlData::Value(Scalar::Null) => Kind::Null,
            YamlData::Value(Scalar::Boolean(b)) => Kind::Bool(*b),
            YamlData::Value(Scalar::Integer(i)) => Kind::Int(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => Kind::Float(f.into_inner()),
            YamlData::Value(Scalar::String(s)) => Kind::Str(s),
            YamlData::Representation(s, ..) => Kind::Str(s),
            YamlData::Sequence(items) => Kind::Seq(items),
            YamlData::Mapping(map) => Kind::Map(map),
            YamlData::Tagged(..) | YamlData::Alias(_) | YamlData::BadValue => Kind::Invalid,
        }
    }

    /// "a string", "a mapping", … for "found …" messages.
    pub(crate) fn describe(self) -> &'static str {
        match self.kind() {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Invalid => "an invalid value",
        }
    }

    /// Whether the node is `null` / empty.
    pub(crate) fn is_null(self) -> bool {
        matches!(self.kind(), Kind::Null)
    }

    /// The string value, if the node is a string.
    pub(crate) fn as_str(self) -> Option<&'a str> {
        match self.kind() {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if the node is a sequence.
    pub(crate) fn items(self) -> Option<Vec<Node<'a>>> {
        match self.kind() {
            Kind::Seq(items) => Some(items.iter().map(|y| Node::new(y, self.src)).collect()),
            _ => None,
        }
    }

    /// The `(key, value)` pairs in document order, if the node is a mapping.
    pub(crate) fn entries(self) -> Option<Vec<(Node<'a>, Node<'a>)>> {
        match self.kind() {
            Kind::Map(map) => Some(map.iter().map(|(k, v)| (Node::new(k, self.src), Node::new(v, self.src))).collect()),
            _ => None,
        }
    }

    /// The raw source text of the node (as written, including quotes).
    fn raw(self) -> &'a str {
        let span = self.y.span;
        self.src.slice(span.start.index(), span.end.index())
    }

    /// The text of a scalar (string, number or boolean); numbers and booleans
    /// keep their spelling from the file (`1.10` stays `1.10`).
    pub(crate) fn scalar_text(self) -> Option<String> {
        let formatted = match self.kind() {
            Kind::Str(s) => return Some(s.to_owned()),
            Kind::Bool(b) => b.to_string(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            _ => return None,
        };
        let raw = self.raw().trim();
        Some(if raw.is_empty() || raw.contains(['\n', '#']) { formatted } else { raw.to_owned() })
    }

    /// Maps a byte `offset` inside this string node's decoded `value` back to
    /// a file position.
    ///
    /// The text of `value` around the offset (restricted to `anchor`, e.g. one
    /// `${{ }}` segment, and to the current line) is searched for in the raw
    /// source of the node; when it is found verbatim (no escapes or folding in
    /// between) the exact position is returned, otherwise the node start.
    pub(crate) fn locate(self, value: &str, anchor: std::ops::Range<usize>, offset: usize) -> Pos {
        self.try_locate(value, anchor, offset).unwrap_or_else(|| self.pos())
    }

    fn try_locate(self, value: &str, anchor: std::ops::Range<usize>, offset: usize) -> Option<Pos> {
        let offset = offset.min(value.len());
        let line_start = value.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
        let line_end = value.get(offset..)?.find('\n').map_or(value.len(), |i| i + offset);
        let start = line_start.max(anchor.start).min(offset);
        let end = line_end.min(anchor.end).max(offset);
        let needle = value.get(start..end)?;
        if needle.is_empty() {
            return None;
        }
        let nth = value.get(..start)?.match_indices(needle).count();
        let span = self.y.span;
        let raw = if span.end.index() > span.start.index() {
            self.raw()
        } else {
            self.src.slice(span.start.index(), usize::MAX)
        };
        let (found, _) = raw.match_indices(needle).nth(nth)?;
        let before = raw.get(..found + (offset - start))?;
        let base = self.pos();
        let newlines = before.matches('\n').count();
        let pos = if newlines == 0 {
            Pos::new(base.line, base.column.saturating_add(count_u32(before)))
        } else {
            let last = before.rsplit('\n').next().unwrap_or("");
            Pos::new(base.line.saturating_add(count_u32_n(newlines)), count_u32(last).saturating_add(1))
        };
        Some(pos)
    }
}

fn count_u32(s: &str) -> u32 {
    count_u32_n(s.chars().count())
}

fn count_u32_n(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
