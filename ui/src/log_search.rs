//! Search in a log: where a query matches (ignoring ASCII case), and a
//! line cut into pieces by style and by match, for highlighting.

use std::collections::BTreeMap;

use crate::{
    ansi::{ParsedLine, Style},
    log_buffer::{JobLog, SectionKey},
};

/// Longest query searched for, in bytes.
pub const MAX_QUERY: usize = 256;

/// A query prepared for matching: ASCII-lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// Prepares `text`; `None` when it is empty (or only whitespace).
    pub fn new(text: &str) -> Option<Self> {
        if text.trim().is_empty() {
            return None;
        }
        let mut end = text.len().min(MAX_QUERY);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(Query(text[..end].to_ascii_lowercase()))
    }

    /// The byte ranges of `text` that match, left to right, not
    /// overlapping.
    pub fn find(&self, text: &str) -> Vec<(usize, usize)> {
        let needle = self.0.as_bytes();
        let hay = text.as_bytes();
        let mut out = Vec::new();
        if needle.is_empty() || hay.len() < needle.len() {
            return out;
        }
        let mut i = 0;
        while i + needle.len() <= hay.len() {
            if hay[i..i + needle.len()].iter().zip(needle).all(|(h, n)| h.to_ascii_lowercase() == *n) {
                // The query is valid UTF-8 and ASCII case folding keeps
                // non-ASCII bytes, so a match starts and ends on character
                // boundaries.
                out.push((i, i + needle.len()));
                i += needle.len();
            } else {
                i += 1;
            }
        }
        out
    }
}

/// A match: section, line in it, byte range in the line's text. Hits sort
/// in the order the log shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    /// The section (attempt, step).
    pub section: SectionKey,
    /// Line (0-based) in the section.
    pub line: usize,
    /// Start byte.
    pub start: usize,
    /// End byte (exclusive).
    pub end: usize,
}

/// The matches of a query in a job log, kept current as lines arrive:
/// only lines not searched yet are scanned (complete lines; a partial last
/// line is searched once it completes).
#[derive(Clone, Debug, Default)]
pub struct Search {
    query: Option<Query>,
    /// All matches, in log order.
    pub hits: Vec<Hit>,
    /// Lines already scanned, per section.
    scanned: BTreeMap<SectionKey, usize>,
    /// The match the viewer is on (index into `hits`).
    pub current: Option<usize>,
}

impl Search {
    /// Searches `log` for `text` from scratch (an empty text clears).
    pub fn set_query(&mut self, text: &str, log: &JobLog) {
        *self = Search { query: Query::new(text), ..Search::default() };
        self.refresh(log);
        self.current = (!self.hits.is_empty()).then_some(0);
    }

    /// True when a query is set.
    pub fn is_active(&self) -> bool {
        self.query.is_some()
    }

    /// Scans the lines that completed since the last call; returns whether
    /// any match was added.
    pub fn refresh(&mut self, log: &JobLog) -> bool {
        let Some(q) = &self.query else { return false };
        let mut added = false;
        for section in &log.sections {
            let done = self.scanned.entry(section.key).or_insert(0);
            if *done >= section.lines.len() {
                continue;
            }
            let mut new: Vec<Hit> = Vec::new();
            for (i, line) in section.lines.iter().enumerate().skip(*done) {
                new.extend(q.find(&line.text).into_iter().map(|(start, end)| Hit {
                    section: section.key,
                    line: i,
                    start,
                    end,
                }));
            }
            *done = section.lines.len();
            if new.is_empty() {
                continue;
            }
            added = true;
            let at = self.hits.partition_point(|h| h < &new[0]);
            if let Some(c) = self.current.as_mut()
                && *c >= at
            {
                *c += new.len();
            }
            self.hits.splice(at..at, new);
        }
        if added && self.current.is_none() {
            self.current = Some(0);
        }
        added
    }

    /// Moves to the next match (wrapping); the new current hit.
    pub fn next_hit(&mut self) -> Option<Hit> {
        self.step(1)
    }

    /// Moves to the previous match (wrapping); the new current hit.
    pub fn prev_hit(&mut self) -> Option<Hit> {
        self.step(-1)
    }

    fn step(&mut self, delta: isize) -> Option<Hit> {
        let n = self.hits.len();
        if n == 0 {
            self.current = None;
            return None;
        }
        let c = match self.current {
            None => 0,
            Some(c) => (c.min(n - 1) as isize + delta).rem_euclid(n as isize) as usize,
        };
        self.current = Some(c);
        self.hits.get(c).copied()
    }

    /// The current hit.
    pub fn current_hit(&self) -> Option<Hit> {
        self.hits.get(self.current?).copied()
    }

    /// The matches in one line (byte ranges) and which of them, if any, is
    /// the current one.
    pub fn in_line(&self, section: SectionKey, line: usize) -> (Vec<(usize, usize)>, Option<usize>) {
        let from = self.hits.partition_point(|h| (h.section, h.line) < (section, line));
        let to = self.hits.partition_point(|h| (h.section, h.line) <= (section, line));
        let ranges = self.hits[from..to].iter().map(|h| (h.start, h.end)).collect();
        let current = self.current.filter(|c| (from..to).contains(c)).map(|c| c - from);
        (ranges, current)
    }
}

/// How a piece of a line is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Not a match.
    None,
    /// A match.
    Hit,
    /// The match the viewer is on.
    Current,
}

/// A piece of a line with one style and one mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Its text.
    pub text: String,
    /// Its style.
    pub style: Style,
    /// Whether it is (part of) a match.
    pub mark: Mark,
}

/// Cuts `line` at style changes and at the edges of `hits` (byte ranges in
/// its text, sorted); the hit at position `current` of `hits` is marked
/// [`Mark::Current`].
pub fn pieces(line: &ParsedLine, hits: &[(usize, usize)], current: Option<usize>) -> Vec<Piece> {
    let text = &line.text;
    let mut cuts: Vec<usize> = vec![0, text.len()];
    cuts.extend(line.runs.iter().map(|r| (r.start as usize).min(text.len())));
    for &(a, b) in hits {
        cuts.push(a.min(text.len()));
        cuts.push(b.min(text.len()));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Piece> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let Some(piece) = text.get(a..b) else { continue };
        let style = line.runs.iter().rev().find(|r| (r.start as usize) <= a).map(|r| r.style).unwrap_or_default();
        let mark = match hits.iter().position(|&(s, e)| s <= a && b <= e) {
            Some(i) if Some(i) == current => Mark::Current,
            Some(_) => Mark::Hit,
            None => Mark::None,
        };
        match out.last_mut() {
            Some(last) if last.style == style && last.mark == mark => last.text.push_str(piece),
            _ => out.push(Piece { text: piece.to_string(), style, mark }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ansi::parse_line;

    #[test]
    fn finds_case_insensitively() {
        let q = Query::new("Err").unwrap();
        assert_eq!(q.find("error: ERR and err"), vec![(0, 3), (7, 10), (15, 18)]);
        assert_eq!(q.find("e"), vec![]);
        assert!(Query::new("  ").is_none());
        let q = Query::new("aa").unwrap();
        assert_eq!(q.find("aaaa"), vec![(0, 2), (2, 4)]);
    }

    #[test]
    fn non_ascii_queries() {
        let q = Query::new("✓ ok").unwrap();
        assert_eq!(q.find("é ✓ OK"), vec![(3, 9)]);
        let long = "é".repeat(MAX_QUERY);
        let q = Query::new(&long).unwrap();
        assert!(q.0.len() <= MAX_QUERY);
    }

    #[test]
    fn pieces_split_by_style_and_match() {
        let (line, _) = parse_line("ab\x1b[31mcdef\x1b[0mgh", Style::default());
        // text "abcdefgh", red over "cdef"; hits "bc" and "fg".
        let p = pieces(&line, &[(1, 3), (5, 7)], Some(1));
        let got: Vec<(&str, bool, Mark)> = p.iter().map(|p| (p.text.as_str(), p.style.fg.is_some(), p.mark)).collect();
        assert_eq!(
            got,
            vec![
                ("a", false, Mark::None),
                ("b", false, Mark::Hit),
                ("c", true, Mark::Hit),
                ("de", true, Mark::None),
                ("f", true, Mark::Current),
                ("g", false, Mark::Current),
                ("h", false, Mark::None),
            ]
        );
    }

    #[test]
    fn search_is_incremental_and_ordered() {
        let mut log = JobLog::default();
        log.chunk("1.1.2", 1, 0, b"error two\n");
        let mut s = Search::default();
        s.set_query("ERROR", &log);
        assert_eq!(s.hits.len(), 1);
        assert_eq!(s.current, Some(0));
        // An earlier section arrives later; the current hit stays the same hit.
        log.chunk("1.1.1", 1, 0, b"an error\nno\nerror error\npartial error");
        assert!(s.refresh(&log));
        let order: Vec<(u32, usize, usize)> = s.hits.iter().map(|h| (h.section.step, h.line, h.start)).collect();
        assert_eq!(order, vec![(1, 0, 3), (1, 2, 0), (1, 2, 6), (2, 0, 0)]);
        assert_eq!(s.current, Some(3));
        assert!(!s.refresh(&log));
        let key = SectionKey { attempt: 1, step: 1 };
        assert_eq!(s.in_line(key, 2), (vec![(0, 5), (6, 11)], None));
        assert_eq!(s.next_hit().map(|h| h.line), Some(0));
        assert_eq!(s.next_hit().map(|h| (h.line, h.start)), Some((2, 0)));
        assert_eq!(s.in_line(key, 2).1, Some(0));
        assert_eq!(s.prev_hit().map(|h| h.line), Some(0));
        assert_eq!(s.prev_hit().map(|h| h.section.step), Some(2));
        assert_eq!(s.in_line(key, 1), (vec![], None));
        s.set_query("", &log);
        assert!(!s.is_active());
        assert_eq!(s.next_hit(), None);
        assert_eq!(s.current_hit(), None);
    }

    #[test]
    fn pieces_of_plain_lines() {
        let (line, _) = parse_line("hello", Style::default());
        assert_eq!(
            pieces(&line, &[], None),
            vec![Piece { text: "hello".into(), style: Style::default(), mark: Mark::None }]
        );
        let (empty, _) = parse_line("", Style::default());
        assert!(pieces(&empty, &[], None).is_empty());
        // Out-of-range hits are clamped, not a panic.
        assert_eq!(pieces(&line, &[(3, 99)], None).len(), 2);
    }
}
