//! Masking secret values in step output before it leaves the runner.
//!
//! Output arrives in arbitrary chunks, so a secret may be split across two
//! of them. The masker replaces every complete occurrence with `***` and
//! holds back only the shortest tail that could still be the beginning of
//! a secret — everything else goes out at once, so live logs stay live.
//! Each line of a multi-line secret is masked too (tools print keys line by
//! line); values shorter than [`MIN_LEN`] are not masked (they would hide
//! ordinary words like "true").

use std::sync::Arc;

/// Shortest value that is masked.
pub const MIN_LEN: usize = 4;
const MASK: &[u8] = b"***";

/// The values to mask, longest first.
#[derive(Debug, Default, Clone)]
pub struct Secrets(Arc<Vec<Vec<u8>>>);

impl Secrets {
    /// The patterns of these secret values.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut v: Vec<Vec<u8>> = Vec::new();
        for value in values {
            for part in std::iter::once(value).chain(value.lines()) {
                let part = part.trim_end_matches('\r');
                if part.len() >= MIN_LEN && !v.iter().any(|p| p == part.as_bytes()) {
                    v.push(part.as_bytes().to_vec());
                }
            }
        }
        v.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self(Arc::new(v))
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        self.held.extend_from_slice(data);
        let buf = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            for p in self.secrets.0.iter() {
                if buf[i..].starts_with(p) {
                    out.extend_from_slice(MASK);
                    i += p.len();
                    continue 'scan;
                }
            }
            // Could a secret start here and continue in the next chunk?
            let tail = &buf[i..];
            if self.secrets.0.iter().any(|p| p.len() > tail.len() && p.starts_with(tail)) {
                self.held = tail.to_vec();
                return out;
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// Whatever is still held back (at the end of the stream).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
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
}
