//! What may reach a terminal from text a job controls (its log, and the
//! names and messages a pipeline file writes).
//!
//! Terminals obey escape sequences, and some of them act: OSC 52 writes the
//! clipboard, OSC 8 makes a link that shows other text than it opens, OSC 0
//! retitles the window, DCS/APC/PM strings reach terminal extensions, CSI
//! sequences move the cursor to overwrite what was printed (so a log could
//! hide or forge lines). Logs keep their colours — SGR (`ESC [ … m`) — and
//! every other control sequence, C1 control and control character but `\n`,
//! `\r` and `\t` is dropped. [`LogFilter`] does this on a stream (a sequence
//! may be split across chunks); [`plain`] strips a whole string of every
//! sequence, colours included (names and messages). Used only when stdout
//! is a terminal: `viaduct logs > file` keeps the exact bytes.

/// Where a stream is in an escape sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Plain text.
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// In `ESC [` (kept if it turns out to be SGR).
    Csi,
    /// In a string sequence (OSC, DCS, SOS, PM, APC) until BEL or ST.
    Str,
    /// ESC inside a string sequence (maybe ST, `ESC \`).
    StrEscape,
    /// After the first byte of a two-byte UTF-8 sequence starting 0xC2 (a
    /// C1 control if the next byte is 0x80–0x9F).
    C2,
}

/// Longest CSI sequence kept; longer ones are dropped.
const MAX_CSI: usize = 64;

/// A streaming filter for one log (see the module docs).
#[derive(Debug, Default)]
pub struct LogFilter {
    state: State,
    csi: Vec<u8>,
}

impl LogFilter {
    /// Filters the next chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            self.state = match self.state {
                State::Ground => match b {
                    0x1b => State::Escape,
                    b'\n' | b'\r' | b'\t' => {
                        out.push(b);
                        State::Ground
                    }
                    0x00..=0x1f | 0x7f => State::Ground,
                    0xc2 => State::C2,
                    _ => {
                        out.push(b);
                        State::Ground
                    }
                },
                State::C2 => match b {
                    // C1 controls (U+0080–U+009F): CSI, OSC, DCS… in one byte.
                    0x80..=0x9f => State::Ground,
                    _ => {
                        out.extend_from_slice(&[0xc2, b]);
                        State::Ground
                    }
                },
                State::Escape => match b {
                    b'[' => {
                        self.csi.clear();
                        State::Csi
                    }
                    b']' | b'P' | b'X' | b'^' | b'_' => State::Str,
                    // Any other escape (charset, reset, keypad…) is two
                    // bytes, or an intermediate byte and a final one.
                    0x20..=0x2f => State::Escape,
                    _ => State::Ground,
                },
                State::Csi => match b {
                    0x40..=0x7e => {
                        let sgr = b == b'm' && self.csi.iter().all(|c| c.is_ascii_digit() || *c == b';' || *c == b':');
                        if sgr {
                            out.extend_from_slice(b"\x1b[");
                            out.extend_from_slice(&self.csi);
                            out.push(b'm');
                        }
                        State::Ground
                    }
                    0x20..=0x3f if self.csi.len() < MAX_CSI => {
                        self.csi.push(b);
                        State::Csi
                    }
                    0x20..=0x3f => State::Csi,
                    // A control or invalid byte ends it.
                    _ => State::Ground,
                },
                State::Str => match b {
                    0x07 => State::Ground,
                    0x1b => State::StrEscape,
                    _ => State::Str,
                },
                State::StrEscape => match b {
                    b'\\' => State::Ground,
                    0x1b => State::StrEscape,
                    _ => State::Str,
                },
            };
        }
        out
    }
}

/// `text` without any escape sequence or control character but `\n` and
/// `\t` (no colours either): names and messages a pipeline writes.
pub fn plain(text: &str) -> String {
    let filtered = LogFilter::default().feed(text.as_bytes());
    let mut out = String::from_utf8_lossy(&filtered).into_owned();
    // Colours were kept by the log filter; drop them too.
    while let Some(start) = out.find("\x1b[") {
        let end = out[start..].find('m').map_or(out.len(), |e| start + e + 1);
        out.replace_range(start..end, "");
    }
    out.replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = LogFilter::default();
        chunks.iter().flat_map(|c| f.feed(c)).collect()
    }

    #[test]
    fn colours_stay_everything_else_goes() {
        assert_eq!(filter(&[b"\x1b[1;31mred\x1b[0m\n"]), b"\x1b[1;31mred\x1b[0m\n");
        assert_eq!(filter(&[b"\x1b[38;2;1;2;3mrgb\x1b[m"]), b"\x1b[38;2;1;2;3mrgb\x1b[m");
        // Title, clipboard, hyperlinks, cursor moves, screen clears.
        assert_eq!(filter(&[b"a\x1b]0;pwned\x07b"]), b"ab");
        assert_eq!(filter(&[b"a\x1b]52;c;ZXZpbA==\x1b\\b"]), b"ab");
        assert_eq!(filter(&[b"\x1b]8;;https://evil.test\x1b\\click\x1b]8;;\x1b\\"]), b"click");
        assert_eq!(filter(&[b"ok\x1b[2K\x1b[1A\x1b[2Jforged"]), b"okforged");
        assert_eq!(filter(&[b"\x1bP+q544e\x1b\\x"]), b"x");
        assert_eq!(filter(&[b"bell\x07 bs\x08\r\n"]), b"bell bs\r\n");
        // C1 controls in UTF-8 (U+009B is a one-byte CSI), while é stays.
        assert_eq!(filter(&["\u{9b}2Jé".as_bytes()]), "2Jé".as_bytes());
    }

    #[test]
    fn sequences_split_across_chunks() {
        assert_eq!(filter(&[b"a\x1b", b"]0;ti", b"tle\x07", b"b"]), b"ab");
        assert_eq!(filter(&[b"\x1b[3", b"2mgreen"]), b"\x1b[32mgreen");
        assert_eq!(filter(&[b"x\xc2", b"\x9b", b"y"]), b"xy");
    }

    #[test]
    fn plain_text_has_no_sequence_at_all() {
        assert_eq!(plain("\x1b[31mbuild\x1b[0m \x1b]0;t\x07job\r"), "build job");
    }
}
