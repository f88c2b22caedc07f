//! ANSI escape sequences in log lines → plain text plus style runs.
//!
//! Only SGR (`ESC [ … m`) changes how text looks: 16, 256 and 24-bit
//! foreground and background colours, bold, dim, italic, underline, inverse,
//! strike-through and resets. Every other escape sequence (cursor movement,
//! erase, OSC titles and hyperlinks, …) and every control character but tab
//! is dropped. A carriage return inside a line starts the line over, the
//! way a terminal shows a progress bar's last state.
//!
//! Styles carry across lines: [`parse_line`] takes the style in force at the
//! start of the line and returns the one in force at its end.

/// A colour as SGR names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// One of the 256 palette colours (0–15 are the themeable basic ones).
    Indexed(u8),
    /// A 24-bit colour.
    Rgb(u8, u8, u8),
}

impl Color {
    /// The CSS value: a theme variable for the 16 basic colours, `rgb()` for
    /// the rest of the palette and for 24-bit colours.
    pub fn css(self) -> String {
        match self {
            Color::Indexed(n) if n < 16 => format!("var(--ansi-{n})"),
            Color::Indexed(n) if n < 232 => {
                let n = n - 16;
                let level = |v: u8| if v == 0 { 0 } else { 55 + 40 * u16::from(v) };
                format!("rgb({},{},{})", level(n / 36), level((n / 6) % 6), level(n % 6))
            }
            Color::Indexed(n) => {
                let v = 8 + 10 * u16::from(n - 232);
                format!("rgb({v},{v},{v})")
            }
            Color::Rgb(r, g, b) => format!("rgb({r},{g},{b})"),
        }
    }
}

/// The look of a stretch of text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Foreground colour (`None`: the log's default).
    pub fg: Option<Color>,
    /// Background colour (`None`: the log's default).
    pub bg: Option<Color>,
    /// SGR 1.
    pub bold: bool,
    /// SGR 2.
    pub dim: bool,
    /// SGR 3.
    pub italic: bool,
    /// SGR 4.
    pub underline: bool,
    /// SGR 7: foreground and background swapped.
    pub inverse: bool,
    /// SGR 9.
    pub strike: bool,
}

impl Style {
    /// True for the default look (nothing to style).
    pub fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    /// An inline CSS declaration list for this style (empty when plain).
    pub fn css(&self) -> String {
        let mut out = String::new();
        let (fg, bg) = if self.inverse {
            (
                Some(self.bg.map_or_else(|| "var(--log-bg)".to_string(), Color::css)),
                Some(self.fg.map_or_else(|| "var(--log-fg)".to_string(), Color::css)),
            )
        } else {
            (self.fg.map(Color::css), self.bg.map(Color::css))
        };
        if let Some(fg) = fg {
            out.push_str("color:");
            out.push_str(&fg);
            out.push(';');
        }
        if let Some(bg) = bg {
            out.push_str("background:");
            out.push_str(&bg);
            out.push(';');
        }
        if self.bold {
            out.push_str("font-weight:bold;");
        }
        if self.dim {
            out.push_str("opacity:.7;");
        }
        if self.italic {
            out.push_str("font-style:italic;");
        }
        match (self.underline, self.strike) {
            (true, true) => out.push_str("text-decoration:underline line-through;"),
            (true, false) => out.push_str("text-decoration:underline;"),
            (false, true) => out.push_str("text-decoration:line-through;"),
            (false, false) => {}
        }
        out
    }

    /// Applies one SGR parameter list (the text between `ESC [` and `m`).
    pub fn apply_sgr(&mut self, params: &str) {
        // Each `;`-separated parameter may carry `:`-separated
        // sub-parameters (ITU T.416 form: `38:2::r:g:b`).
        let groups: Vec<Vec<Option<u32>>> = params
            .split(';')
            .map(|g| g.split(':').map(|p| if p.is_empty() { None } else { p.parse().ok() }).collect())
            .collect();
        let mut i = 0;
        while i < groups.len() {
            let group = &groups[i];
            let code = group.first().copied().flatten().unwrap_or(0);
            i += 1;
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                7 => self.inverse = true,
                9 => self.strike = true,
                21 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                27 => self.inverse = false,
                29 => self.strike = false,
                30..=37 => self.fg = Some(Color::Indexed((code - 30) as u8)),
                39 => self.fg = None,
                40..=47 => self.bg = Some(Color::Indexed((code - 40) as u8)),
                49 => self.bg = None,
                90..=97 => self.fg = Some(Color::Indexed((code - 90 + 8) as u8)),
                100..=107 => self.bg = Some(Color::Indexed((code - 100 + 8) as u8)),
                38 | 48 => {
                    let color = if group.len() > 1 {
                        extended_colon(&group[1..])
                    } else {
                        let (color, used) = extended_semicolon(&groups[i..]);
                        i += used;
                        color
                    };
                    if let Some(c) = color {
                        if code == 38 {
                            self.fg = Some(c);
                        } else {
                            self.bg = Some(c);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn byte(v: Option<u32>) -> Option<u8> {
    v.and_then(|v| u8::try_from(v).ok())
}

/// `38:5:n` / `38:2:r:g:b` / `38:2:cs:r:g:b` (the colon form).
fn extended_colon(sub: &[Option<u32>]) -> Option<Color> {
    match sub.first().copied().flatten()? {
        5 => byte(*sub.get(1)?).map(Color::Indexed),
        2 => {
            // With a colour-space id (possibly empty) there are four values.
            let rgb = if sub.len() >= 5 { &sub[2..5] } else { sub.get(1..4)? };
            Some(Color::Rgb(byte(rgb[0])?, byte(rgb[1])?, byte(rgb[2])?))
        }
        _ => None,
    }
}

/// `38;5;n` / `38;2;r;g;b` (the common semicolon form): the colour and how
/// many of the following groups it used.
fn extended_semicolon(rest: &[Vec<Option<u32>>]) -> (Option<Color>, usize) {
    let val = |k: usize| rest.get(k).and_then(|g| g.first().copied().flatten());
    match val(0) {
        Some(5) => (byte(val(1)).map(Color::Indexed), 2.min(rest.len())),
        Some(2) => {
            let c = match (byte(val(1)), byte(val(2)), byte(val(3))) {
                (Some(r), Some(g), Some(b)) => Some(Color::Rgb(r, g, b)),
                _ => None,
            };
            (c, 4.min(rest.len()))
        }
        Some(_) => (None, 1),
        None => (None, rest.len().min(1)),
    }
}

/// From byte `start` of a line's plain text on, text has `style` (until the
/// next run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StyleRun {
    /// Byte offset in the plain text.
    pub start: u32,
    /// The style from there on.
    pub style: Style,
}

/// One line of a log, escape sequences removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedLine {
    /// What is shown.
    pub text: String,
    /// Style changes in `text`, in order; none at all for a plain line. The
    /// text before the first run is unstyled.
    pub runs: Vec<StyleRun>,
}

/// A stretch of text with one style.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span<'a> {
    /// The text.
    pub text: &'a str,
    /// Its style.
    pub style: Style,
}

impl ParsedLine {
    /// The line as consecutive styled spans (empty spans left out).
    pub fn spans(&self) -> Vec<Span<'_>> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        let mut style = Style::default();
        for run in &self.runs {
            let start = (run.start as usize).min(self.text.len());
            if start > pos
                && let Some(text) = self.text.get(pos..start)
            {
                out.push(Span { text, style });
            }
            pos = pos.max(start);
            style = run.style;
        }
        if pos < self.text.len()
            && let Some(text) = self.text.get(pos..)
        {
            out.push(Span { text, style });
        }
        out
    }
}

/// Parses one line (without its line ending) that starts in style `start`:
/// the plain text and style runs, and the style in force at its end.
pub fn parse_line(line: &str, start: Style) -> (ParsedLine, Style) {
    let mut out = ParsedLine::default();
    let mut style = start;
    if !style.is_plain() {
        out.runs.push(StyleRun { start: 0, style });
    }
    let bytes = line.as_bytes();
    let mut i = 0;
    // Start of the pending stretch of ordinary text.
    let mut text_from = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b >= 0x20 && b != 0x7f || b == b'\t' {
            i += 1;
            continue;
        }
        out.text.push_str(&line[text_from..i]);
        match b {
            0x1b => {
                let (len, sgr) = escape(&bytes[i..]);
                if let Some(params) = sgr {
                    let before = style;
                    style.apply_sgr(params);
                    if style != before {
                        set_run(&mut out, style);
                    }
                }
                i += len;
            }
            b'\r' => {
                // Carriage return: what follows overwrites the line. A
                // trailing one (CRLF) changes nothing.
                if i + 1 < bytes.len() {
                    out.text.clear();
                    out.runs.clear();
                    if !style.is_plain() {
                        out.runs.push(StyleRun { start: 0, style });
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
        text_from = i;
    }
    out.text.push_str(&line[text_from..]);
    // Drop runs that start at the very end (no text after them), but keep
    // the style for the next line.
    while out.runs.last().is_some_and(|r| r.start as usize >= out.text.len() && !out.text.is_empty()) {
        out.runs.pop();
    }
    if out.text.is_empty() {
        out.runs.clear();
    }
    (out, style)
}

fn set_run(out: &mut ParsedLine, style: Style) {
    let start = u32::try_from(out.text.len()).unwrap_or(u32::MAX);
    if let Some(last) = out.runs.last_mut()
        && last.start == start
    {
        last.style = style;
        return;
    }
    if out.runs.is_empty() && style.is_plain() {
        return;
    }
    out.runs.push(StyleRun { start, style });
}

/// The length of the escape sequence at the start of `b` (which starts with
/// ESC), and its parameters when it is an SGR sequence. The params are ASCII
/// by construction, so slicing the `&str` there is sound.
fn escape(b: &[u8]) -> (usize, Option<&str>) {
    match b.get(1) {
        None => (1, None),
        Some(b'[') => {
            // CSI: parameter bytes 0x30–0x3F, intermediates 0x20–0x2F, a
            // final byte 0x40–0x7E.
            let mut j = 2;
            while j < b.len() && (0x30..=0x3f).contains(&b[j]) {
                j += 1;
            }
            let params_end = j;
            while j < b.len() && (0x20..=0x2f).contains(&b[j]) {
                j += 1;
            }
            match b.get(j) {
                Some(&f) if (0x40..=0x7e).contains(&f) => {
                    let sgr = (f == b'm' && params_end == j)
                        .then(|| std::str::from_utf8(&b[2..params_end]).ok())
                        .flatten()
                        .filter(|p| !p.starts_with(['<', '=', '>', '?']));
                    (j + 1, sgr)
                }
                // Malformed or cut off: drop what was scanned.
                _ => (j.max(2), None),
            }
        }
        Some(b']' | b'P' | b'_' | b'^') => {
            // OSC / DCS / APC / PM: up to BEL or ST (ESC \).
            let mut j = 2;
            while j < b.len() {
                if b[j] == 0x07 {
                    return (j + 1, None);
                }
                if b[j] == 0x1b && b.get(j + 1) == Some(&b'\\') {
                    return (j + 2, None);
                }
                j += 1;
            }
            (j, None)
        }
        // Character-set selection takes one more (ASCII) byte.
        Some(b'(' | b')' | b'*' | b'+') => (if b.get(2).is_some_and(u8::is_ascii) { 3 } else { 2 }, None),
        // A lone ESC before a non-ASCII character: keep the character.
        Some(c) if !c.is_ascii() => (1, None),
        Some(_) => (2, None),
    }
}

/// The text of `line` without any escape sequence or control character
/// (carriage returns applied).
pub fn strip(line: &str) -> String {
    parse_line(line, Style::default()).0.text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red() -> Style {
        Style { fg: Some(Color::Indexed(1)), ..Style::default() }
    }

    #[test]
    fn plain_text_has_no_runs() {
        let (l, end) = parse_line("hello\tworld", Style::default());
        assert_eq!(l.text, "hello\tworld");
        assert!(l.runs.is_empty());
        assert!(end.is_plain());
    }

    #[test]
    fn basic_colours_and_reset() {
        let (l, end) = parse_line("a\x1b[31mred\x1b[0m b", Style::default());
        assert_eq!(l.text, "ared b");
        let spans = l.spans();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0], Span { text: "a", style: Style::default() });
        assert_eq!(spans[1], Span { text: "red", style: red() });
        assert_eq!(spans[2], Span { text: " b", style: Style::default() });
        assert!(end.is_plain());
    }

    #[test]
    fn attributes_and_their_resets() {
        let mut s = Style::default();
        s.apply_sgr("1;2;3;4;7;9");
        assert!(s.bold && s.dim && s.italic && s.underline && s.inverse && s.strike);
        s.apply_sgr("22;23;24;27;29");
        assert!(s.is_plain());
        s.apply_sgr("");
        assert!(s.is_plain());
    }

    #[test]
    fn bright_and_background_colours() {
        let mut s = Style::default();
        s.apply_sgr("92;104");
        assert_eq!(s.fg, Some(Color::Indexed(10)));
        assert_eq!(s.bg, Some(Color::Indexed(12)));
        s.apply_sgr("39;49");
        assert!(s.is_plain());
    }

    #[test]
    fn extended_colours_both_forms() {
        let mut s = Style::default();
        s.apply_sgr("38;5;208;48;2;1;2;3;1");
        assert_eq!(s.fg, Some(Color::Indexed(208)));
        assert_eq!(s.bg, Some(Color::Rgb(1, 2, 3)));
        assert!(s.bold);
        let mut s = Style::default();
        s.apply_sgr("38:2::10:20:30;48:5:17");
        assert_eq!(s.fg, Some(Color::Rgb(10, 20, 30)));
        assert_eq!(s.bg, Some(Color::Indexed(17)));
        let mut s = Style::default();
        s.apply_sgr("38:2:10:20:30");
        assert_eq!(s.fg, Some(Color::Rgb(10, 20, 30)));
    }

    #[test]
    fn malformed_extended_colours_do_not_panic() {
        for p in ["38", "38;5", "38;2;1", "48;2;300;1;1", "38;9;1", "38:5", "38:2:1", ";;;", "999999999999"] {
            let mut s = Style::default();
            s.apply_sgr(p);
        }
        let mut s = Style::default();
        s.apply_sgr("38;2;300;1;1;1");
        assert_eq!(s.fg, None);
    }

    #[test]
    fn palette_css() {
        assert_eq!(Color::Indexed(3).css(), "var(--ansi-3)");
        assert_eq!(Color::Indexed(16).css(), "rgb(0,0,0)");
        assert_eq!(Color::Indexed(231).css(), "rgb(255,255,255)");
        assert_eq!(Color::Indexed(196).css(), "rgb(255,0,0)");
        assert_eq!(Color::Indexed(232).css(), "rgb(8,8,8)");
        assert_eq!(Color::Indexed(255).css(), "rgb(238,238,238)");
        assert_eq!(red().css(), "color:var(--ansi-1);");
        let inv = Style { inverse: true, ..Style::default() };
        assert_eq!(inv.css(), "color:var(--log-bg);background:var(--log-fg);");
    }

    #[test]
    fn style_carries_across_lines() {
        let (l1, end) = parse_line("\x1b[31mstart", Style::default());
        assert_eq!(l1.spans(), vec![Span { text: "start", style: red() }]);
        let (l2, end2) = parse_line("more\x1b[0m", end);
        assert_eq!(l2.spans(), vec![Span { text: "more", style: red() }]);
        assert!(end2.is_plain());
    }

    #[test]
    fn other_sequences_are_dropped() {
        let line = "\x1b[2K\x1b[1Gdone \x1b]8;;http://x\x07link\x1b]8;;\x1b\\ \x1b(Bok\x1b[?25l\x07\x08";
        assert_eq!(strip(line), "done link ok");
    }

    #[test]
    fn carriage_return_overwrites() {
        assert_eq!(strip("progress 10%\rprogress 100%"), "progress 100%");
        assert_eq!(strip("crlf line\r"), "crlf line");
        let (l, _) = parse_line("\x1b[32m10%\r20%", Style::default());
        assert_eq!(l.text, "20%");
        assert_eq!(l.spans()[0].style.fg, Some(Color::Indexed(2)));
    }

    #[test]
    fn cut_off_sequences() {
        assert_eq!(strip("a\x1b"), "a");
        assert_eq!(strip("a\x1b["), "a");
        assert_eq!(strip("a\x1b[31"), "a");
        assert_eq!(strip("a\x1b]0;title"), "a");
    }

    #[test]
    fn escapes_next_to_non_ascii_never_split_characters() {
        assert_eq!(strip("a\x1b(é"), "aé");
        assert_eq!(strip("a\x1bé"), "aé");
        assert_eq!(strip("\x1b[31é"), "é");
        assert_eq!(strip("\x1b]0;tïtle\x07ü"), "ü");
        assert_eq!(strip("日\x1b"), "日");
    }

    #[test]
    fn random_input_never_panics() {
        // Deterministic xorshift over an alphabet rich in escape syntax.
        let alphabet: Vec<&str> = vec![
            "\x1b", "[", "]", ";", ":", "3", "8", "5", "2", "m", "K", "\r", "\x07", "\\", "é", "日", "a", "(", "?", " ",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut line = String::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push_str(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let (parsed, _) = parse_line(&line, Style::default());
            let joined: String = parsed.spans().iter().map(|s| s.text).collect();
            assert_eq!(joined, parsed.text);
        }
    }

    #[test]
    fn unicode_is_kept() {
        let (l, _) = parse_line("\x1b[1mé✓\x1b[0m日本", Style::default());
        assert_eq!(l.text, "é✓日本");
        let spans = l.spans();
        assert_eq!(spans[0].text, "é✓");
        assert_eq!(spans[1].text, "日本");
    }

    #[test]
    fn redundant_changes_collapse() {
        let (l, _) = parse_line("\x1b[31m\x1b[32mx\x1b[0m\x1b[0m", Style::default());
        assert_eq!(l.runs.len(), 1);
        assert_eq!(l.runs[0].style.fg, Some(Color::Indexed(2)));
    }
}
