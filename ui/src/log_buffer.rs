//! The log of one job as the viewer holds it: one section per step (and per
//! attempt, when the job was retried), each a list of parsed lines.
//!
//! Chunks arrive as byte ranges of a step's log (`Logs.Follow`). A section
//! keeps the bytes it has received; a chunk that overlaps them (a resend
//! after a reconnect) is trimmed, so nothing shows twice. Bytes after the
//! last newline wait for the rest of their line but are shown meanwhile as
//! a partial last line. Lines are split on `\n`, decoded as UTF-8 (invalid
//! bytes replaced) and parsed for ANSI styles once, when they complete.

use std::collections::BTreeMap;

use viaduct_proto::v1::Status;

use crate::ansi::{self, ParsedLine, Style};

/// Longest line kept, in bytes; the rest of a longer line is cut (and the
/// cut marked) so one runaway line cannot stall the page.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Bytes waiting for a newline before they are broken into a line anyway.
const MAX_PENDING: usize = 64 * 1024;

/// Marks where an over-long line was cut.
const CUT_MARK: &str = " …[line cut]";

/// Which section: the job attempt and the 1-based step index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectionKey {
    /// Job attempt (1 = first run).
    pub attempt: u32,
    /// Step index in the job (1-based).
    pub step: u32,
}

/// One step's log.
#[derive(Clone, Debug)]
pub struct Section {
    /// Attempt and step.
    pub key: SectionKey,
    /// Public step id ("42.1.3").
    pub step_id: String,
    /// Step name.
    pub name: String,
    /// State as last reported by the log stream.
    pub status: Status,
    /// Exit code, once finished.
    pub exit_code: Option<i32>,
    /// True once the step finished and all its log arrived.
    pub finished: bool,
    /// Folded away in the view.
    pub collapsed: bool,
    /// Complete lines.
    pub lines: Vec<ParsedLine>,
    /// Bytes of the step's log received (the offset to resume from).
    pub received: u64,
    /// Bytes after the last newline.
    pending: Vec<u8>,
    /// Style in force at the start of the next line.
    carry: Style,
}

impl Section {
    fn new(key: SectionKey, step_id: String) -> Self {
        Section {
            key,
            step_id,
            name: String::new(),
            status: Status::Pending,
            exit_code: None,
            finished: false,
            collapsed: false,
            lines: Vec::new(),
            received: 0,
            pending: Vec::new(),
            carry: Style::default(),
        }
    }

    /// Lines to show: the complete ones plus a partial last line.
    pub fn line_count(&self) -> usize {
        self.lines.len() + usize::from(!self.pending.is_empty())
    }

    /// Line `i` (0-based), the partial last line included.
    pub fn line(&self, i: usize) -> Option<ParsedLine> {
        if let Some(l) = self.lines.get(i) {
            return Some(l.clone());
        }
        (i == self.lines.len() && !self.pending.is_empty()).then(|| parse(&self.pending, self.carry).0)
    }

    /// Appends `data`, which starts at byte `offset` of the step's log.
    /// Returns how many complete lines were added.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> usize {
        let end = offset.saturating_add(data.len() as u64);
        if end <= self.received {
            return 0;
        }
        let skip = usize::try_from(self.received.saturating_sub(offset)).unwrap_or(usize::MAX).min(data.len());
        // A gap (offset past what we have) cannot be filled: show what came.
        self.received = end;
        let before = self.lines.len();
        let mut rest = &data[skip..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..nl]);
            self.complete_line();
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() > MAX_PENDING {
            let tail = self.pending.split_off(MAX_PENDING);
            self.complete_line();
            self.pending = tail;
        }
        self.lines.len() - before
    }

    /// Turns the partial last line into a complete one (the step ended
    /// without a final newline).
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.complete_line();
        }
    }

    /// Characters in the longest line from line `from` on, the partial
    /// last line included.
    fn widest_since(&self, from: usize) -> usize {
        let partial = if self.pending.is_empty() { 0 } else { self.pending.len().min(MAX_LINE_BYTES) };
        self.lines[from.min(self.lines.len())..].iter().map(|l| l.text.chars().count()).max().unwrap_or(0).max(partial)
    }

    fn complete_line(&mut self) {
        let (line, end) = parse(&self.pending, self.carry);
        self.carry = end;
        self.lines.push(line);
        self.pending.clear();
    }
}

fn parse(bytes: &[u8], start: Style) -> (ParsedLine, Style) {
    let (bytes, cut) = if bytes.len() > MAX_LINE_BYTES { (&bytes[..MAX_LINE_BYTES], true) } else { (bytes, false) };
    let text = String::from_utf8_lossy(bytes);
    let (mut line, end) = ansi::parse_line(&text, start);
    if cut {
        line.text.push_str(CUT_MARK);
    }
    (line, end)
}

/// What the log stream says about a step (a `StepBoundary`).
#[derive(Clone, Debug, Default)]
pub struct Boundary {
    /// Public step id ("42.1.3").
    pub step_id: String,
    /// Step name.
    pub name: String,
    /// Step index (1-based).
    pub index: u32,
    /// Job attempt.
    pub attempt: u32,
    /// State.
    pub status: Status,
    /// Exit code (when finished).
    pub exit_code: Option<i32>,
    /// True after the step's last chunk.
    pub finished: bool,
}

/// All sections of a job's log, in (attempt, step) order.
#[derive(Clone, Debug, Default)]
pub struct JobLog {
    /// The sections, sorted by key.
    pub sections: Vec<Section>,
    /// Bumped on every change (for views keyed on content).
    pub version: u64,
    /// Characters in the longest line so far (to size the view's width).
    pub widest: usize,
}

/// Parses the index of a public step id ("42.1.3" → 3).
pub fn step_index(step_id: &str) -> Option<u32> {
    step_id.rsplit('.').next()?.parse().ok()
}

impl JobLog {
    /// The section of `key`, created (in order) when missing.
    fn section_mut(&mut self, key: SectionKey, step_id: &str) -> &mut Section {
        let pos = match self.sections.binary_search_by(|s| s.key.cmp(&key)) {
            Ok(pos) => pos,
            Err(pos) => {
                let latest = self.latest_attempt();
                let mut section = Section::new(key, step_id.to_string());
                // Earlier attempts are folded: the current one matters.
                section.collapsed = latest > key.attempt;
                if key.attempt > latest {
                    for s in &mut self.sections {
                        s.collapsed = true;
                    }
                }
                self.sections.insert(pos, section);
                pos
            }
        };
        // Safe: `pos` is in bounds in both arms.
        &mut self.sections[pos]
    }

    /// Index of the section with `key`.
    pub fn find(&self, key: SectionKey) -> Option<usize> {
        self.sections.binary_search_by(|s| s.key.cmp(&key)).ok()
    }

    /// The newest attempt seen.
    pub fn latest_attempt(&self) -> u32 {
        self.sections.iter().map(|s| s.key.attempt).max().unwrap_or(0)
    }

    /// Applies a step boundary (start or finish of a step).
    pub fn boundary(&mut self, b: &Boundary) {
        let key = SectionKey { attempt: b.attempt, step: b.index };
        let s = self.section_mut(key, &b.step_id);
        if !b.name.is_empty() {
            s.name.clone_from(&b.name);
        }
        s.status = b.status;
        if b.finished {
            s.exit_code = b.exit_code;
            s.finished = true;
            let before = s.lines.len();
            s.flush();
            let widest = s.widest_since(before);
            self.widest = self.widest.max(widest);
        }
        self.version += 1;
    }

    /// Appends a chunk of a step's log; returns the number of new complete
    /// lines.
    pub fn chunk(&mut self, step_id: &str, attempt: u32, offset: u64, data: &[u8]) -> usize {
        let Some(step) = step_index(step_id) else { return 0 };
        let section = self.section_mut(SectionKey { attempt, step }, step_id);
        let added = section.append(offset, data);
        let widest = section.widest_since(section.lines.len() - added);
        self.widest = self.widest.max(widest);
        self.version += 1;
        added
    }

    /// Folds or unfolds a section.
    pub fn toggle(&mut self, section: usize) {
        if let Some(s) = self.sections.get_mut(section) {
            s.collapsed = !s.collapsed;
            self.version += 1;
        }
    }

    /// Unfolds a section.
    pub fn expand(&mut self, section: usize) {
        if let Some(s) = self.sections.get_mut(section)
            && s.collapsed
        {
            s.collapsed = false;
            self.version += 1;
        }
    }

    /// Where to resume `Logs.Follow` after a reconnect: step id → offset,
    /// given the job's current attempt.
    ///
    /// The server applies an offset to every attempt of a step id. So a
    /// step resumes at the smallest offset over its attempts (sections trim
    /// what they already have), and a step with nothing yet of the current
    /// attempt (a retry that began while disconnected) starts over at 0 —
    /// otherwise the new attempt's first bytes would be skipped.
    pub fn resume_offsets(&self, current_attempt: u32) -> BTreeMap<String, u64> {
        let current = current_attempt.max(self.latest_attempt());
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for s in &self.sections {
            out.entry(s.step_id.clone()).and_modify(|o| *o = (*o).min(s.received)).or_insert(s.received);
        }
        out.retain(|id, _| self.sections.iter().any(|s| &s.step_id == id && s.key.attempt == current));
        out
    }

    /// Total lines over all sections (shown or folded).
    pub fn total_lines(&self) -> usize {
        self.sections.iter().map(Section::line_count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &Section) -> Vec<String> {
        (0..s.line_count()).filter_map(|i| s.line(i)).map(|l| l.text).collect()
    }

    fn section() -> Section {
        Section::new(SectionKey { attempt: 1, step: 1 }, "1.1.1".into())
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = section();
        assert_eq!(s.append(0, b"one\ntw"), 1);
        assert_eq!(texts(&s), ["one", "tw"]);
        assert_eq!(s.append(6, b"o\r\nthree"), 1);
        assert_eq!(texts(&s), ["one", "two", "three"]);
        assert_eq!(s.line_count(), 3);
        s.flush();
        assert_eq!(s.lines.len(), 3);
        assert_eq!(s.received, 14);
    }

    #[test]
    fn overlapping_chunks_are_trimmed() {
        let mut s = section();
        s.append(0, b"abc\nde");
        // A resend from offset 2 after a reconnect.
        assert_eq!(s.append(2, b"c\ndef\n"), 1);
        assert_eq!(texts(&s), ["abc", "def"]);
        // Entirely old data.
        assert_eq!(s.append(0, b"abc"), 0);
        assert_eq!(texts(&s), ["abc", "def"]);
        assert_eq!(s.received, 8);
    }

    #[test]
    fn gaps_still_show_what_came() {
        let mut s = section();
        s.append(0, b"a\n");
        s.append(10, b"b\n");
        assert_eq!(texts(&s), ["a", "b"]);
        assert_eq!(s.received, 12);
    }

    #[test]
    fn utf8_split_across_chunks() {
        let mut s = section();
        let bytes = "é✓\n".as_bytes();
        s.append(0, &bytes[..1]);
        s.append(1, &bytes[1..4]);
        s.append(4, &bytes[4..]);
        assert_eq!(texts(&s), ["é✓"]);
        let mut s = section();
        s.append(0, b"\xff\xfeok\n");
        assert_eq!(texts(&s), ["\u{fffd}\u{fffd}ok"]);
    }

    #[test]
    fn styles_carry_over_lines() {
        let mut s = section();
        s.append(0, b"\x1b[31mred\nstill red\x1b[0m\nplain\n");
        assert!(!s.lines[1].runs.is_empty());
        assert!(s.lines[2].runs.is_empty());
    }

    #[test]
    fn long_lines_are_cut() {
        let mut s = section();
        let big = vec![b'x'; MAX_PENDING * 2 + 10];
        s.append(0, &big);
        assert_eq!(s.lines.len(), 2);
        assert!(s.lines[0].text.ends_with(CUT_MARK));
        assert_eq!(s.line_count(), 3);
    }

    #[test]
    fn sections_ordered_and_resumable() {
        let mut log = JobLog::default();
        log.boundary(&Boundary {
            step_id: "7.1.2".into(),
            name: "build".into(),
            index: 2,
            attempt: 1,
            status: Status::Running,
            ..Boundary::default()
        });
        log.chunk("7.1.1", 1, 0, b"first\n");
        log.chunk("7.1.2", 1, 0, b"second\npart");
        assert_eq!(log.sections.len(), 2);
        assert_eq!(log.sections[0].key.step, 1);
        assert_eq!(log.sections[1].name, "build");
        assert_eq!(log.total_lines(), 3);
        assert_eq!(log.widest, 6);
        log.boundary(&Boundary {
            step_id: "7.1.2".into(),
            index: 2,
            attempt: 1,
            status: Status::Success,
            exit_code: Some(0),
            finished: true,
            ..Boundary::default()
        });
        assert_eq!(log.sections[1].lines.len(), 2);
        assert!(log.sections[1].finished);
        // A retry: attempt 2 starts again at offset 0 of the same step ids.
        log.chunk("7.1.1", 2, 0, b"again\n");
        log.boundary(&Boundary { step_id: "7.1.1".into(), index: 1, attempt: 2, ..Boundary::default() });
        assert!(log.sections[0].collapsed && log.sections[1].collapsed);
        assert!(!log.sections[2].collapsed);
        let offsets = log.resume_offsets(2);
        assert_eq!(offsets["7.1.1"], 6);
        // Step 2 has nothing of attempt 2 yet: it starts over.
        assert!(!offsets.contains_key("7.1.2"));
        // A third attempt began while disconnected: everything starts over.
        assert!(log.resume_offsets(3).is_empty());
        assert_eq!(JobLog::default().resume_offsets(1).len(), 0);
        assert_eq!(log.latest_attempt(), 2);
        assert_eq!(log.find(SectionKey { attempt: 2, step: 1 }), Some(2));
    }

    #[test]
    fn random_chunks_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut log = JobLog::default();
        for _ in 0..500 {
            let len = (next() % 64) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| [b'\n', b'\r', 0x1b, b'[', b'm', 0xc3, 0xa9, 0xff, b'a'][(next() % 9) as usize])
                .collect();
            let step = next() % 3 + 1;
            let attempt = (next() % 2 + 1) as u32;
            let offset = next() % 200;
            log.chunk(&format!("1.1.{step}"), attempt, offset, &data);
            if next() % 10 == 0 {
                log.boundary(&Boundary {
                    step_id: format!("1.1.{step}"),
                    index: step as u32,
                    attempt,
                    finished: true,
                    ..Boundary::default()
                });
            }
        }
        for s in &log.sections {
            for i in 0..s.line_count() + 1 {
                let _ = s.line(i);
            }
        }
    }

    #[test]
    fn bad_step_ids_are_ignored() {
        let mut log = JobLog::default();
        assert_eq!(log.chunk("nope", 1, 0, b"x\n"), 0);
        assert!(log.sections.is_empty());
        assert_eq!(step_index("1.2.3"), Some(3));
        assert_eq!(step_index(""), None);
    }
}
