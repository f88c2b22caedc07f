//! The debug shell's terminal, without the browser: what the shell's
//! output makes of the screen, and what a key press sends.
//!
//! This is a simple line-oriented terminal, not a terminal emulator: the
//! output becomes lines of plain text, and only what a shell's line
//! editing needs moves the cursor within the current line — carriage
//! return, backspace, tab, and the CSI sequences for cursor left/right,
//! column, erase in line, delete and insert characters. Every other escape
//! sequence (colours too: they are dropped, as [`crate::ansi::strip`]
//! drops them) and control character is ignored, and a screen-clearing
//! `ESC [ 2 J` starts the lines afresh. Full-screen programs (editors,
//! pagers, `top`) do not draw properly here; the shell runs with
//! `TERM=dumb`, which tells most of them so.

use std::collections::VecDeque;

/// Lines kept (older ones scroll away).
pub const MAX_LINES: usize = 5000;

/// The longest escape sequence parsed; a longer one is dropped.
const MAX_SEQUENCE: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Escape {
    /// Plain text.
    #[default]
    None,
    /// After ESC.
    Start,
    /// After ESC and a character-set designator (`(`, `)`…): one more.
    Charset,
    /// `ESC [` and its parameters so far.
    Csi(String),
    /// `ESC ]` (a title, a hyperlink…) until BEL or `ESC \`.
    Osc,
    /// ESC inside an OSC (`ESC \` ends it).
    OscEsc,
}

/// The terminal's lines and its cursor (always on the last line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screen {
    /// Finished lines, oldest first.
    lines: VecDeque<String>,
    /// The line the cursor is on.
    current: Vec<char>,
    /// The cursor's column in `current`.
    col: usize,
    escape: Escape,
    /// The start of a UTF-8 character split between two outputs.
    partial: Vec<u8>,
}

impl Default for Screen {
    fn default() -> Self {
        Self::new()
    }
}

impl Screen {
    /// An empty screen.
    pub fn new() -> Self {
        Screen { lines: VecDeque::new(), current: Vec::new(), col: 0, escape: Escape::None, partial: Vec::new() }
    }

    /// Takes the shell's output: bytes as they came (a character or an
    /// escape sequence may be split between two calls).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(bytes);
        let mut rest = &data[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    s.chars().for_each(|c| self.put(c));
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // Valid by construction.
                    std::str::from_utf8(good).unwrap_or_default().chars().for_each(|c| self.put(c));
                    match e.error_len() {
                        Some(n) => {
                            self.put(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        // A character cut short: the rest comes next time.
                        None => {
                            self.partial = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
    }

    fn put(&mut self, c: char) {
        match std::mem::take(&mut self.escape) {
            Escape::None => self.plain(c),
            Escape::Start => {
                self.escape = match c {
                    '[' => Escape::Csi(String::new()),
                    ']' => Escape::Osc,
                    '(' | ')' | '*' | '+' | '-' | '.' | '/' | '#' | '%' => Escape::Charset,
                    _ => Escape::None,
                }
            }
            Escape::Charset => {}
            Escape::Csi(mut params) => match c {
                '\u{40}'..='\u{7e}' => self.csi(&params, c),
                '\u{20}'..='\u{3f}' if params.len() < MAX_SEQUENCE => {
                    params.push(c);
                    self.escape = Escape::Csi(params);
                }
                _ => {}
            },
            Escape::Osc => match c {
                '\u{7}' => {}
                '\u{1b}' => self.escape = Escape::OscEsc,
                _ => self.escape = Escape::Osc,
            },
            Escape::OscEsc => {
                if c != '\\' {
                    self.escape = Escape::Osc;
                }
            }
        }
    }

    fn plain(&mut self, c: char) {
        match c {
            '\u{1b}' => self.escape = Escape::Start,
            '\r' => self.col = 0,
            '\n' => self.newline(),
            '\u{8}' => self.col = self.col.saturating_sub(1),
            '\t' => {
                let to = (self.col / 8 + 1) * 8;
                while self.current.len() < to {
                    self.current.push(' ');
                }
                self.col = to;
            }
            c if c.is_control() => {}
            c => {
                while self.current.len() < self.col {
                    self.current.push(' ');
                }
                match self.current.get_mut(self.col) {
                    Some(at) => *at = c,
                    None => self.current.push(c),
                }
                self.col += 1;
            }
        }
    }

    fn newline(&mut self) {
        let line: String = self.current.drain(..).collect();
        self.lines.push_back(line.trim_end().to_string());
        while self.lines.len() >= MAX_LINES {
            self.lines.pop_front();
        }
        self.col = 0;
    }

    /// A CSI sequence with its parameters and final character.
    fn csi(&mut self, params: &str, last: char) {
        // Private sequences (`ESC [ ? 2004 h`…) change modes: ignored.
        if params.starts_with(['?', '<', '=', '>']) {
            return;
        }
        let first = params.split(';').next().and_then(|p| p.parse::<usize>().ok());
        let n = first.unwrap_or(1).max(1);
        let len = self.current.len();
        match last {
            // Cursor back, forward, to a column.
            'D' => self.col = self.col.saturating_sub(n),
            'C' => self.col += n,
            'G' => self.col = n - 1,
            // Erase in line: to its end, to the cursor, all of it.
            'K' => match first.unwrap_or(0) {
                0 => self.current.truncate(self.col.min(len)),
                1 => self.current.iter_mut().take(self.col + 1).for_each(|c| *c = ' '),
                _ => self.current.clear(),
            },
            // Delete characters (the rest moves left); erase some; insert
            // blanks (the rest moves right).
            'P' if self.col < len => {
                self.current.drain(self.col..(self.col + n).min(len));
            }
            'X' => self.current.iter_mut().skip(self.col).take(n).for_each(|c| *c = ' '),
            '@' if self.col <= len => {
                self.current.splice(self.col..self.col, std::iter::repeat_n(' ', n));
            }
            // Erase the screen: start over.
            'J' if matches!(first, Some(2 | 3)) => {
                self.lines.clear();
                self.current.clear();
                self.col = 0;
            }
            _ => {}
        }
    }

    /// The finished lines, as text (each ends with a newline).
    pub fn history(&self) -> String {
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.len() + 1).sum());
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// The cursor's line in three parts: before the cursor, the character
    /// under it (a space past the end), after it.
    pub fn cursor_line(&self) -> (String, char, String) {
        let before: String = self.current.iter().take(self.col).collect();
        let pad = " ".repeat(self.col.saturating_sub(self.current.len()));
        let at = self.current.get(self.col).copied().unwrap_or(' ');
        let after: String = self.current.iter().skip(self.col + 1).collect();
        (before + &pad, at, after)
    }

    /// Everything, as text (the cursor's line last).
    pub fn text(&self) -> String {
        let mut out = self.history();
        out.extend(self.current.iter());
        out
    }
}

/// What a key press sends to the shell: its bytes, or `None` for keys the
/// terminal leaves to the browser (function keys, shortcuts with the
/// Meta/Command key, modifiers alone). `key` is the DOM `KeyboardEvent.key`.
pub fn key_bytes(key: &str, ctrl: bool, alt: bool, meta: bool) -> Option<Vec<u8>> {
    if meta {
        return None;
    }
    let named: Option<&[u8]> = match key {
        "Enter" => Some(b"\r"),
        "Backspace" => Some(b"\x7f"),
        "Tab" => Some(b"\t"),
        "Escape" => Some(b"\x1b"),
        "ArrowUp" => Some(b"\x1b[A"),
        "ArrowDown" => Some(b"\x1b[B"),
        "ArrowRight" => Some(b"\x1b[C"),
        "ArrowLeft" => Some(b"\x1b[D"),
        "Home" => Some(b"\x1b[H"),
        "End" => Some(b"\x1b[F"),
        "Delete" => Some(b"\x1b[3~"),
        "PageUp" => Some(b"\x1b[5~"),
        "PageDown" => Some(b"\x1b[6~"),
        _ => None,
    };
    let mut chars = key.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return named.map(<[u8]>::to_vec);
    };
    let mut out = Vec::new();
    if alt {
        out.push(0x1b);
    }
    if ctrl {
        // Ctrl-A … Ctrl-Z (Ctrl-C interrupts, Ctrl-D ends input), and
        // Ctrl-@ [ \ ] ^ _.
        let b = match c.to_ascii_uppercase() {
            c @ ('@'..='_') => c as u8 & 0x1f,
            ' ' => 0,
            '?' => 0x7f,
            _ => return None,
        };
        out.push(b);
    } else {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    Some(out)
}

/// Pasted text as the shell should get it: line ends as Enter sends them.
pub fn paste_bytes(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\r").replace('\n', "\r").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(output: &[&[u8]]) -> Screen {
        let mut s = Screen::new();
        for o in output {
            s.feed(o);
        }
        s
    }

    #[test]
    fn output_becomes_lines_of_plain_text() {
        let s = screen(&[b"$ ls\r\n", b"\x1b[01;34mdir\x1b[0m  file\r\n$ "]);
        assert_eq!(s.text(), "$ ls\ndir  file\n$ ");
        assert_eq!(s.cursor_line(), ("$ ".to_string(), ' ', String::new()));
        // A title (OSC) and mode changes leave nothing behind.
        let s = screen(&[b"\x1b]0;user@host: ~\x07\x1b[?2004h$ \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"]);
        assert_eq!(s.text(), "$ link");
    }

    #[test]
    fn characters_and_sequences_split_between_outputs_are_joined() {
        let s = screen(&[b"caf\xc3", b"\xa9 \x1b[3", b"1mred\x1b", b"[0m\r", b"\n"]);
        assert_eq!(s.text(), "café red\n");
        assert_eq!(screen(&[b"a\xffb"]).text(), "a\u{fffd}b");
    }

    #[test]
    fn line_editing_moves_within_the_line() {
        // Backspace as shells echo it, and as readline erases.
        assert_eq!(screen(&[b"$ lsx\x08 \x08\x08\x1b[K"]).text(), "$ l");
        // Carriage return overwrites (a progress line).
        assert_eq!(screen(&[b"10%\r100%\r\n"]).text(), "100%\n");
        // Cursor left, insert, delete, column.
        let s = screen(&[b"$ echo hi\x1b[3D\x1b[2@XY"]);
        assert_eq!(s.text(), "$ echoXY hi");
        assert_eq!(s.cursor_line(), ("$ echoXY".to_string(), ' ', "hi".to_string()));
        assert_eq!(screen(&[b"abcdef\x1b[1G\x1b[2P"]).text(), "cdef");
        assert_eq!(screen(&[b"a\tb"]).text(), "a       b");
        // Clearing the screen starts over.
        assert_eq!(screen(&[b"old\r\nlines\r\n\x1b[H\x1b[2J$ "]).text(), "$ ");
    }

    #[test]
    fn old_lines_scroll_away() {
        let mut s = Screen::new();
        for i in 0..MAX_LINES + 10 {
            s.feed(format!("line {i}\r\n").as_bytes());
        }
        let text = s.text();
        assert!(!text.starts_with("line 0\n") && text.ends_with(&format!("line {}\n", MAX_LINES + 9)));
        assert!(text.lines().count() < MAX_LINES);
    }

    #[test]
    fn keys_send_what_a_terminal_sends() {
        let k = |key: &str, ctrl: bool| key_bytes(key, ctrl, false, false);
        assert_eq!(k("a", false), Some(b"a".to_vec()));
        assert_eq!(k("é", false), Some("é".as_bytes().to_vec()));
        assert_eq!(k("Enter", false), Some(b"\r".to_vec()));
        assert_eq!(k("Backspace", false), Some(vec![0x7f]));
        assert_eq!(k("Tab", false), Some(b"\t".to_vec()));
        assert_eq!(k("ArrowUp", false), Some(b"\x1b[A".to_vec()));
        assert_eq!(k("ArrowLeft", false), Some(b"\x1b[D".to_vec()));
        assert_eq!(k("c", true), Some(vec![0x03]));
        assert_eq!(k("C", true), Some(vec![0x03]));
        assert_eq!(k("d", true), Some(vec![0x04]));
        assert_eq!(key_bytes("b", false, true, false), Some(b"\x1bb".to_vec()));
        assert_eq!(key_bytes("c", false, false, true), None, "Cmd-C copies");
        for ignored in ["Shift", "Control", "F5", "CapsLock"] {
            assert_eq!(k(ignored, false), None, "{ignored}");
        }
        assert_eq!(paste_bytes("a\nb\r\n"), b"a\rb\r".to_vec());
    }
}
