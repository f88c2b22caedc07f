//! Links to one log line: `#L<step>-<line>` (the job's current attempt) or
//! `#L<step>-<line>-a<attempt>` (an earlier attempt). Steps and lines count
//! from 1, as shown.

/// A line a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Step index (1-based).
    pub step: u32,
    /// Line number (1-based).
    pub line: usize,
    /// The attempt, when not the latest.
    pub attempt: Option<u32>,
}

impl Anchor {
    /// Parses a URL fragment, with or without the leading `#`.
    pub fn parse(fragment: &str) -> Option<Anchor> {
        let rest = fragment.strip_prefix('#').unwrap_or(fragment).strip_prefix('L')?;
        let mut parts = rest.split('-');
        let step: u32 = parts.next()?.parse().ok()?;
        let line: usize = parts.next()?.parse().ok()?;
        let attempt = match parts.next() {
            None => None,
            Some(a) => Some(a.strip_prefix('a')?.parse().ok()?),
        };
        if parts.next().is_some() || step == 0 || line == 0 || attempt == Some(0) {
            return None;
        }
        Some(Anchor { step, line, attempt })
    }

    /// The fragment without `#`, e.g. `L2-15`; `attempt` is written only
    /// when it is not `latest`.
    pub fn id(step: u32, line: usize, attempt: u32, latest: u32) -> String {
        if attempt == latest { format!("L{step}-{line}") } else { format!("L{step}-{line}-a{attempt}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(Anchor::parse("#L2-15"), Some(Anchor { step: 2, line: 15, attempt: None }));
        assert_eq!(Anchor::parse("L2-15-a1"), Some(Anchor { step: 2, line: 15, attempt: Some(1) }));
        assert_eq!(Anchor::id(2, 15, 3, 3), "L2-15");
        assert_eq!(Anchor::id(2, 15, 1, 3), "L2-15-a1");
        assert_eq!(Anchor::parse(&Anchor::id(4, 9, 1, 2)), Some(Anchor { step: 4, line: 9, attempt: Some(1) }));
    }

    #[test]
    fn rejects_garbage() {
        for f in ["", "#", "#L", "#L2", "#L2-", "#L0-1", "#L1-0", "#L1-2-3", "#L1-2-a0", "#Lx-1", "#top", "#L1-2-a1-x"]
        {
            assert_eq!(Anchor::parse(f), None, "{f}");
        }
    }
}
