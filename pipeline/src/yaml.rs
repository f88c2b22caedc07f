//! Loading YAML text into span-carrying [`MarkedYaml`] trees.
//!
//! saphyr's loader stops at the first duplicate key, so the event stream is
//! forwarded to it (with duplicates allowed) through a small receiver that
//! reports *every* duplicate key itself and bounds the nesting depth (which
//! keeps every later recursive walk over the tree shallow) and the size of
//! the tree with its aliases expanded (saphyr copies an anchored node at
//! each alias, so a few lines of aliases of aliases could otherwise ask for
//! gigabytes). Events are pulled iteratively, so arbitrarily deep input
//! cannot overflow the stack.

use std::collections::HashMap;

use saphyr::{MarkedYaml, ScanError, YamlData, YamlLoader};
use saphyr_parser::{Event, Marker, Parser, Span, SpannedEventReceiver};

use crate::diag::{Diagnostic, Pos};

/// Maximum nesting depth of mappings and sequences accepted in a pipeline file.
pub(crate) const MAX_DEPTH: usize = 64;
/// Most nodes a pipeline file may hold with its aliases expanded.
pub(crate) const MAX_NODES: u64 = 100_000;
/// Most bytes of scalars a pipeline file may hold with its aliases
/// expanded (8× the largest file the server takes).
pub(crate) const MAX_SCALAR_BYTES: u64 = 8 << 20;

/// The size of a subtree with its aliases expanded.
#[derive(Clone, Copy, Default)]
struct Weight {
    nodes: u64,
    bytes: u64,
}

impl Weight {
    fn add(&mut self, w: Weight) {
        self.nodes = self.nodes.saturating_add(w.nodes);
        self.bytes = self.bytes.saturating_add(w.bytes);
    }
}

/// Converts a saphyr marker (1-based line, 0-based column) to a [`Pos`].
pub(crate) fn marker_pos(m: &Marker) -> Pos {
    Pos::new(
        u32::try_from(m.line().max(1)).unwrap_or(u32::MAX),
        u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX),
    )
}

/// Mapping/sequence bookkeeping for duplicate-key detection.
enum Kind {
    Map { keys: HashMap<String, Pos>, expecting_key: bool },
    Seq,
}

/// An open mapping or sequence.
struct Frame {
    kind: Kind,
    /// Its anchor (0: none).
    anchor: usize,
    /// Its size so far, aliases expanded.
    weight: Weight,
}

/// Forwards events to saphyr's loader while checking keys, depth and size.
struct Receiver<'input> {
    loader: YamlLoader<'input, MarkedYaml<'input>>,
    frames: Vec<Frame>,
    /// Set when the document nests deeper than [`MAX_DEPTH`], or grows past
    /// [`MAX_NODES`] or [`MAX_SCALAR_BYTES`] with its aliases expanded: the
    /// loader is no longer fed after that.
    refused: Option<(Pos, String)>,
    duplicates: Vec<(String, Pos, Pos)>,
    /// The expanded size of each anchored node.
    anchors: HashMap<usize, Weight>,
    /// The whole stream's, aliases expanded.
    total: Weight,
}

impl<'input> Receiver<'input> {
    /// Counts `w` into the open nodes and the total; refuses the document
    /// once it is too large.
    fn grow(&mut self, w: Weight, pos: Pos) {
        self.total.add(w);
        for f in &mut self.frames {
            f.weight.add(w);
        }
        if self.total.nodes > MAX_NODES {
            self.refused =
                Some((pos, format!("YAML too large: more than {MAX_NODES} nodes with its aliases expanded")));
        } else if self.total.bytes > MAX_SCALAR_BYTES {
            self.refused = Some((
                pos,
                format!("YAML too large: more than {} MiB of values with its aliases expanded", MAX_SCALAR_BYTES >> 20),
            ));
        }
    }

    /// Called for every node start; `key` is the scalar text for scalars.
    fn begin_node(&mut self, key: Option<&str>, pos: Pos) {
        if let Some(Frame { kind: Kind::Map { keys, expecting_key }, .. }) = self.frames.last_mut() {
            if *expecting_key && let Some(k) = key {
                if let Some(first) = keys.get(k) {
                    self.duplicates.push((k.to_owned(), *first, pos));
                } else {
                    keys.insert(k.to_owned(), pos);
                }
            }
            *expecting_key = !*expecting_key;
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Receiver<'input> {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        if self.refused.is_some() {
            return;
        }
        let pos = marker_pos(&span.start);
        match &ev {
            Event::Scalar(text, _, anchor, _) => {
                self.begin_node(Some(text), pos);
                let w = Weight { nodes: 1, bytes: text.len() as u64 };
                if *anchor > 0 {
                    self.anchors.insert(*anchor, w);
                }
                self.grow(w, pos);
            }
            Event::Alias(anchor) => {
                self.begin_node(None, pos);
                let w = self.anchors.get(anchor).copied().unwrap_or(Weight { nodes: 1, bytes: 0 });
                self.grow(w, pos);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.begin_node(None, pos);
                if self.frames.len() >= MAX_DEPTH {
                    self.refused = Some((pos, format!("YAML nested too deeply (more than {MAX_DEPTH} levels)")));
                    return;
                }
                self.grow(Weight { nodes: 1, bytes: 0 }, pos);
                let kind = if matches!(ev, Event::MappingStart(..)) {
                    Kind::Map { keys: HashMap::new(), expecting_key: true }
                } else {
                    Kind::Seq
                };
                self.frames.push(Frame { kind, anchor: *anchor, weight: Weight { nodes: 1, bytes: 0 } });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(f) = self.frames.pop()
                    && f.anchor > 0
                {
                    self.anchors.insert(f.anchor, f.weight);
                }
            }
            _ => {}
        }
        if self.refused.is_none() {
            self.loader.on_event(ev, span);
        }
    }
}

/// Parses `text` into YAML documents.
///
/// Syntax errors and excessive nesting are fatal (`Err`); duplicate keys are
/// returned alongside the documents (the last value wins) so that decoding can
/// go on and report further errors.
pub(crate) fn load<'input>(
    file: &str,
    text: &'input str,
) -> Result<(Vec<MarkedYaml<'input>>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut loader = YamlLoader::default();
    loader.allow_duplicate_keys(true);
    let mut recv = Receiver {
        loader,
        frames: Vec::new(),
        refused: None,
        duplicates: Vec::new(),
        anchors: HashMap::new(),
        total: Weight::default(),
    };
    // Pull events one by one rather than using `Parser::load`, which recurses
    // once per nesting level and would overflow the stack on deep input.
    let mut result = Ok(());
    for event in Parser::new_from_str(text) {
        match event {
            Ok((ev, span)) => recv.on_event(ev, span),
            Err(e) => result = Err(e),
        }
        if result.is_err() || recv.refused.is_some() {
            break;
        }
    }

    let mut diags: Vec<Diagnostic> = recv
        .duplicates
        .iter()
        .map(|(key, first, pos)| {
            Diagnostic::new(file, *pos, format!("duplicate key `{key}` (first defined at {first})"))
        })
        .collect();
    if let Some((pos, why)) = recv.refused {
        diags.push(Diagnostic::new(file, pos, why));
        return Err(diags);
    }
    let scan_error = result.err().or_else(|| recv.loader.error().cloned());
    if let Some(e) = scan_error {
        diags.push(scan_diagnostic(file, &e));
        return Err(diags);
    }
    Ok((recv.loader.into_documents(), diags))
}

fn scan_diagnostic(file: &str, e: &ScanError) -> Diagnostic {
    Diagnostic::new(file, marker_pos(e.marker()), format!("YAML syntax error: {}", e.info()))
}

/// Whether a loaded document is empty (no content at all).
pub(crate) fn is_empty_document(doc: &MarkedYaml<'_>) -> bool {
    matches!(doc.data, YamlData::BadValue | YamlData::Value(saphyr::Scalar::Null))
}
