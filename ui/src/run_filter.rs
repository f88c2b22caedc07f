//! The runs list's filters and their form in the URL query string
//! (`?status=failure,timed_out&pipeline=ci&repo=app&branch=main`), so a
//! filtered list can be linked and survives a reload.

use viaduct_proto::{
    StatusWord,
    v1::{Run, Status},
};

/// Filters of the runs list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Any of these states (empty: all).
    pub statuses: Vec<Status>,
    /// Pipeline name (exact).
    pub pipeline: String,
    /// Repository name (exact).
    pub repo: String,
    /// Branch (exact).
    pub branch: String,
}

impl RunFilter {
    /// Reads the filters from decoded query pairs; unknown keys and status
    /// words are ignored.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut f = RunFilter::default();
        for (k, v) in pairs {
            let v = v.trim();
            match k {
                "status" => {
                    for w in v.split(',') {
                        if let Some(s) = Status::from_word(w.trim())
                            && s != Status::Unspecified
                            && !f.statuses.contains(&s)
                        {
                            f.statuses.push(s);
                        }
                    }
                }
                "pipeline" => f.pipeline = v.to_string(),
                "repo" => f.repo = v.to_string(),
                "branch" => f.branch = v.to_string(),
                _ => {}
            }
        }
        f
    }

    /// The query string for these filters (without `?`; empty when none).
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.statuses.is_empty() {
            let words: Vec<&str> = self.statuses.iter().map(|s| s.word()).collect();
            parts.push(format!("status={}", encode(&words.join(","))));
        }
        for (k, v) in [("pipeline", &self.pipeline), ("repo", &self.repo), ("branch", &self.branch)] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        parts.join("&")
    }

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.pipeline.is_empty() && self.repo.is_empty() && self.branch.is_empty()
    }

    /// True when `run` passes the filters (for runs that appear live).
    pub fn matches(&self, run: &Run) -> bool {
        let src = run.source.as_ref();
        (self.statuses.is_empty() || self.statuses.contains(&run.status()))
            && (self.pipeline.is_empty() || run.pipeline == self.pipeline)
            && (self.repo.is_empty() || src.is_some_and(|s| s.repo == self.repo))
            && (self.branch.is_empty() || src.is_some_and(|s| s.branch == self.branch))
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query component (`+` is a space); malformed
/// escapes are kept as they are, invalid UTF-8 replaced.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a query string (with or without `?`) into decoded pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.strip_prefix('?')
        .unwrap_or(q)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::RunSource;

    use super::*;

    #[test]
    fn query_round_trip() {
        let f = RunFilter {
            statuses: vec![Status::Failure, Status::TimedOut],
            pipeline: "ci & more".into(),
            repo: "app".into(),
            branch: "feature/x".into(),
        };
        let q = f.to_query();
        assert_eq!(q, "status=failure,timed_out&pipeline=ci%20%26%20more&repo=app&branch=feature%2Fx");
        let pairs = parse_query(&format!("?{q}"));
        let back = RunFilter::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, f);
        assert!(RunFilter::default().to_query().is_empty());
        assert!(RunFilter::default().is_empty());
    }

    #[test]
    fn bad_input_is_ignored() {
        let f = RunFilter::from_pairs([("status", "nope,running,running,unspecified"), ("x", "y")]);
        assert_eq!(f.statuses, vec![Status::Running]);
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("a+b%41%"), "a bA%");
        assert_eq!(decode("%ff"), "\u{fffd}");
        assert_eq!(
            parse_query("a&=b&c=d=e"),
            vec![("a".into(), "".into()), ("".into(), "b".into()), ("c".into(), "d=e".into())]
        );
    }

    #[test]
    fn matching() {
        let mut r = Run { id: "1".into(), pipeline: "ci".into(), status: Status::Running as i32, ..Run::default() };
        assert!(RunFilter::default().matches(&r));
        let f = RunFilter { repo: "app".into(), ..RunFilter::default() };
        assert!(!f.matches(&r));
        r.source = Some(RunSource { repo: "app".into(), branch: "main".into(), ..RunSource::default() });
        assert!(f.matches(&r));
        let f = RunFilter { branch: "dev".into(), ..RunFilter::default() };
        assert!(!f.matches(&r));
        let f = RunFilter { statuses: vec![Status::Running], pipeline: "ci".into(), ..RunFilter::default() };
        assert!(f.matches(&r));
    }
}
