//! Masking secret values in everything a job sends: step output (logs),
//! step outputs, messages and plugin summaries.
//!
//! A secret is masked in the forms a job prints it in by accident or on
//! purpose: as is, each of its lines (tools print keys line by line),
//! reversed, hex (both cases), base64 (standard and URL-safe alphabets, at
//! each of the three alignments it can have inside a longer encoded text —
//! only the characters that depend on the secret alone), URL-encoded and
//! JSON-escaped. All forms are searched in one pass (Aho–Corasick,
//! leftmost-longest). Values shorter than [`MIN_LEN`] are not masked (they
//! would hide ordinary words like "true"; the server refuses to store
//! them).
//!
//! Output arrives in arbitrary chunks, so a secret may be split across two
//! of them. The masker holds back only the shortest tail that could still
//! be the beginning of a form of a secret — everything else goes out at
//! once, so live logs stay live. At the end of the stream a held-back tail
//! of at least [`MIN_LEN`] bytes is masked too (it is the beginning of a
//! secret: a step that prints a secret cut short must not show it).
//!
//! Masking is a guard against accidents and casual exfiltration, not a
//! boundary: a job that has a secret can always leak it in a form nobody
//! thought of. The boundary is which jobs get secrets at all (the server's
//! trust rules).

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

/// Shortest value (and encoded form) that is masked.
pub const MIN_LEN: usize = 4;
const MASK: &[u8] = b"***";

/// The forms to mask, compiled.
#[derive(Debug)]
struct Patterns {
    ac: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    /// Bytes that start some pattern (a tail can be held back only from
    /// one of them).
    starts: [bool; 256],
}

/// The values to mask.
#[derive(Debug, Default, Clone)]
pub struct Secrets(Option<Arc<Patterns>>);

/// Every form of `part` that is masked.
fn forms(part: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![part.to_vec(), part.iter().rev().copied().collect()];
    // The whole value encoded, padding included (longest match wins).
    for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
        out.push(engine.encode(part).into_bytes());
    }
    let lower = hex::encode(part);
    out.push(lower.to_ascii_uppercase().into_bytes());
    out.push(lower.into_bytes());
    for shift in 0..3usize {
        let mut padded = vec![0u8; shift];
        padded.extend_from_slice(part);
        // Characters fully determined by the secret's own bits: from bit
        // 8·shift to bit 8·(shift + len), six bits per character.
        let (first, last) = ((8 * shift).div_ceil(6), 8 * (shift + part.len()) / 6);
        for engine in
            [&base64::engine::general_purpose::STANDARD_NO_PAD, &base64::engine::general_purpose::URL_SAFE_NO_PAD]
        {
            let encoded = engine.encode(&padded);
            if let Some(inner) = encoded.as_bytes().get(first..last) {
                out.push(inner.to_vec());
            }
        }
    }
    let (mut upper, mut lower) = (Vec::new(), Vec::new());
    for &b in part {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            upper.push(b);
            lower.push(b);
        } else {
            upper.extend_from_slice(format!("%{b:02X}").as_bytes());
            lower.extend_from_slice(format!("%{b:02x}").as_bytes());
        }
    }
    out.push(upper);
    out.push(lower);
    if let Ok(text) = std::str::from_utf8(part)
        && let Ok(json) = serde_json::to_string(text)
    {
        out.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    out
}

impl Secrets {
    /// The patterns of these secret values.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            for part in std::iter::once(value).chain(value.lines()) {
                let part = part.trim_end_matches('\r');
                if part.len() < MIN_LEN {
                    continue;
                }
                for form in forms(part.as_bytes()) {
                    if form.len() >= MIN_LEN && !patterns.contains(&form) {
                        patterns.push(form);
                    }
                }
            }
        }
        if patterns.is_empty() {
            return Self(None);
        }
        let mut starts = [false; 256];
        for p in &patterns {
            starts[usize::from(p[0])] = true;
        }
        match AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns) {
            Ok(ac) => Self(Some(Arc::new(Patterns { ac, patterns, starts }))),
            // Only on absurd pattern sizes: mask nothing rather than crash,
            // and say so.
            Err(e) => {
                tracing::error!(error = %e, "cannot build the secret masker: secrets will not be masked");
                Self(None)
            }
        }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// `text` with every form of every secret masked (a whole value: an
    /// output, a message, a summary).
    pub fn mask_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut m = Masker::new(self.clone());
        let mut out = m.feed(text.as_bytes());
        out.extend(m.finish());
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A masking filter for one stream.
#[derive(Debug, Default)]
pub struct Masker {
    secrets: Secrets,
    held: Vec<u8>,
}

impl Masker {
    /// A filter for `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Self { secrets, held: Vec::new() }
    }

    /// Masks `data`; returns what can be emitted now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(p) = self.secrets.0.clone() else { return data.to_vec() };
        self.held.extend_from_slice(data);
        let buf = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        for m in p.ac.find_iter(&buf) {
            out.extend_from_slice(&buf[at..m.start()]);
            out.extend_from_slice(MASK);
            at = m.end();
        }
        // Could a form of a secret start in the tail and continue in the
        // next chunk? Hold back from the first place where one could.
        let tail = (at..buf.len()).find(|&i| {
            p.starts[usize::from(buf[i])]
                && p.patterns.iter().any(|pat| pat.len() > buf.len() - i && pat.starts_with(&buf[i..]))
        });
        let end = tail.unwrap_or(buf.len());
        out.extend_from_slice(&buf[at..end]);
        self.held = buf[end..].to_vec();
        out
    }

    /// Whatever is still held back (at the end of the stream): masked when
    /// it is at least [`MIN_LEN`] bytes of the beginning of a secret.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        if held.len() >= MIN_LEN { MASK.to_vec() } else { held }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn run(secrets: &[&str], chunks: &[&str]) -> String {
        let mut m = Masker::new(Secrets::new(secrets.iter().copied()));
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.feed(c.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_and_split_occurrences() {
        assert_eq!(run(&["hunter2"], &["pass=hunter2\n"]), "pass=***\n");
        assert_eq!(run(&["hunter2"], &["pass=hun", "ter2 and hunter2"]), "pass=*** and ***");
        assert_eq!(run(&["hunter2"], &["hunt", "ing season"]), "hunting season");
        assert_eq!(run(&["abc"], &["abc"]), "abc", "too short to mask");
        assert_eq!(run(&["line-one\nline-two"], &["x line-two y"]), "x *** y");
    }

    #[test]
    fn only_a_possible_prefix_is_held_back() {
        let mut m = Masker::new(Secrets::new(["s3cr3t-value"]));
        assert_eq!(m.feed(b"output s3c"), b"output ");
        assert_eq!(m.feed(b"r3"), b"");
        assert_eq!(m.feed(b"x"), b"s3cr3x");
    }

    #[test]
    fn a_secret_cut_short_at_the_end_is_masked() {
        assert_eq!(run(&["s3cr3t-value"], &["key: s3cr3t-val"]), "key: ***");
        assert_eq!(run(&["s3cr3t-value"], &["end s3c"]), "end s3c", "three bytes say nothing");
    }

    #[test]
    fn encoded_forms_are_masked() {
        let secret = "Tr0ub4dor&3 horse?";
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let url_b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let secrets = Secrets::new([secret]);
        for shown in [
            secret.chars().rev().collect::<String>(),
            hex::encode(secret),
            hex::encode_upper(secret),
            b64(secret.as_bytes()),
            url_b64(secret.as_bytes()),
            "Tr0ub4dor%263%20horse%3F".to_string(),
        ] {
            let masked = secrets.mask_str(&format!("<{shown}>"));
            assert!(!masked.contains(&shown), "{shown} shows in {masked}");
            assert!(masked.contains("***"), "{masked}");
        }
        // Inside a longer base64 text, at every alignment.
        for prefix in ["", "a", "ab", "abc"] {
            let text = b64(format!("{prefix}{secret}!tail").as_bytes());
            let masked = secrets.mask_str(&text);
            assert!(masked.contains("***") && masked.len() < text.len(), "{prefix:?}: {masked}");
        }
        let json = Secrets::new(["a\"quoted\\value"]);
        assert_eq!(json.mask_str(r#"{"k":"a\"quoted\\value"}"#), r#"{"k":"***"}"#);
    }
}
