//! Loading YAML text into span-carrying [`MarkedYaml`] trees.
//!
//! saphyr's loader stops at the first duplicate key, so the event stream is
//! forwarded to it (with duplicates allowed) through a small receiver that
//! reports *every* duplicate key itself and bounds the nesting depth (which
//! keeps every later recursive walk over the tree shallow). Events are pulled
//! iteratively, so arbitrarily deep input cannot overflow the stack.

use std::collections::HashMap;

use saphyr::{MarkedYaml, ScanError, YamlData, YamlLoader};
use saphyr_parser::{Event, Marker, Parser, Span, SpannedEventReceiver};

use crate::diag::{Diagnostic, Pos};

/// Maximum nesting depth of mappings and sequences accepted in a pipeline file.
pub(crate) const MAX_DEPTH: usize = 64;

/// Converts a saphyr marker (1-based line, 0-based column) to a [`Pos`].
pub(crate) fn marker_pos(m: &Marker) -> Pos {
    Pos::new(
        u32::try_from(m.line().max(1)).unwrap_or(u32::MAX),
        u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX),
    )
}

/// Mapping/sequence bookkeeping for duplicate-key detection.
enum Frame {
    Map { keys: HashMap<String, Pos>, expecting_key: bool },
    Seq,
}

/// Forwards events to saphyr's loader while checking keys and depth.
struct Receiver<'input> {
    loader: YamlLoader<'input, MarkedYaml<'input>>,
    frames: Vec<Frame>,
    /// Set when the document nests deeper than [`MAX_DEPTH`]; the loader is
    /// no longer fed after that.
    too_deep: Option<Pos>,
    duplicates: Vec<(String, Pos, Pos)>,
}

impl<'input> Receiver<'input> {
    /// Called for every node start; `key` is the scalar text for scalars.
    fn begin_node(&mut self, key: Option<&str>, pos: Pos) {
        if let Some(Frame::Map { keys, expecting_key }) = self.frames.last_mut() {
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
        if self.too_deep.is_some() {
            return;
        }
        let pos = marker_pos(&span.start);
        match &ev {
            Event::Scalar(text, ..) => self.begin_node(Some(text), pos),
            Event::Alias(_) => self.begin_node(None, pos),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                self.begin_node(None, pos);
                if self.frames.len() >= MAX_DEPTH {
                    self.too_deep = Some(pos);
                    return;
                }
                self.frames.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { keys: HashMap::new(), expecting_key: true }
                } else {
                    Frame::Seq
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.frames.pop();
            }
            _ => {}
        }
        self.loader.on_event(ev, span);
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
    let mut recv = Receiver { loader, frames: Vec::new(), too_deep: None, duplicates: Vec::new() };
    // Pull events one by one rather than using `Parser::load`, which recurses
    // once per nesting level and would overflow the stack on deep input.
    let mut result = Ok(());
    for event in Parser::new_from_str(text) {
        match event {
            Ok((ev, span)) => recv.on_event(ev, span),
            Err(e) => result = Err(e),
        }
        if result.is_err() || recv.too_deep.is_some() {
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
    if let Some(pos) = recv.too_deep {
        diags.push(Diagnostic::new(file, pos, format!("YAML nested too deeply (more than {MAX_DEPTH} levels)")));
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
