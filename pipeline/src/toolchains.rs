//! Toolchain labels: what a runner found on its machine, as labels `runs_on`
//! can ask for — `rust`, `rust:1`, `rust:1.95`, `rust:1.95.0`, `node:20`….
//!
//! The runner probes the programs in [`KNOWN`] and advertises
//! [`labels`] for each version it finds; the server accepts only labels
//! [`is_label`] admits, so a runner cannot claim an arbitrary label (such as
//! one an admin pins to route deploy jobs) as a "toolchain".

/// The toolchains runners look for: the label name and the program that
/// tells its version.
pub const KNOWN: [(&str, &str, &[&str]); 11] = [
    ("rust", "rustc", &["--version"]),
    ("cargo", "cargo", &["--version"]),
    ("node", "node", &["--version"]),
    ("python", "python3", &["--version"]),
    ("go", "go", &["version"]),
    ("java", "java", &["-version"]),
    ("nix", "nix", &["--version"]),
    ("docker", "docker", &["--version"]),
    ("podman", "podman", &["--version"]),
    ("gcc", "gcc", &["--version"]),
    ("clang", "clang", &["--version"]),
];

/// Most labels a runner may advertise as toolchains.
pub const MAX_LABELS: usize = 64;

/// The version in a program's `--version` output: the first word that is
/// digits and dots after an optional `v`/`go` prefix or inside quotes
/// (`v20.11.1`, `go1.22.1`, `"17.0.9"`, `1.95.0`), as at most 3 numbers;
/// Java's old `1.8.0` reads as `8.0`.
pub fn version_in(output: &str) -> Option<String> {
    let line = output.lines().find(|l| !l.trim().is_empty())?;
    let found =
        line.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '(' || c == ')').find_map(|w| {
            let w = w.strip_prefix('v').or_else(|| w.strip_prefix("go")).unwrap_or(w);
            let digits: String = w.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let digits = digits.trim_end_matches('.');
            (digits.contains('.') && digits.starts_with(|c: char| c.is_ascii_digit())).then(|| digits.to_string())
        })?;
    let mut parts: Vec<&str> = found.split('.').filter(|p| !p.is_empty()).collect();
    if parts.first() == Some(&"1")
        && parts.get(1).is_some_and(|m| m.parse::<u32>().is_ok_and(|m| (2..=8).contains(&m)))
        && line.contains("version \"1.")
    {
        parts.remove(0);
    }
    parts.truncate(3);
    Some(parts.join("."))
}

/// The labels of toolchain `name` at `version`: the name, then each
/// prefix of the version (`rust`, `rust:1`, `rust:1.95`, `rust:1.95.0`).
pub fn labels(name: &str, version: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    let mut prefix = String::new();
    for part in version.split('.').take(3) {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(part);
        out.push(format!("{name}:{prefix}"));
    }
    out
}

/// Whether `label` is a toolchain label: a [`KNOWN`] name, alone or with
/// `:` and 1–3 dot-separated numbers.
pub fn is_label(label: &str) -> bool {
    let (name, version) = match label.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (label, None),
    };
    KNOWN.iter().any(|(k, ..)| *k == name)
        && version.is_none_or(|v| {
            let parts: Vec<&str> = v.split('.').collect();
            parts.len() <= 3
                && parts.iter().all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_real_outputs() {
        let cases = [
            ("rustc 1.95.0 (29483883e 2026-01-07)", "1.95.0"),
            ("cargo 1.95.0 (f2d3ce0bd 2025-12-01)\n", "1.95.0"),
            ("v20.11.1\n", "20.11.1"),
            ("Python 3.11.2", "3.11.2"),
            ("go version go1.22.1 linux/amd64", "1.22.1"),
            ("openjdk version \"17.0.9\" 2023-10-17\nOpenJDK Runtime Environment", "17.0.9"),
            ("java version \"1.8.0_392\"", "8.0"),
            ("nix (Nix) 2.13.3", "2.13.3"),
            ("Docker version 24.0.5, build ced0996", "24.0.5"),
            ("podman version 4.3.1", "4.3.1"),
            ("gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022", "12.2.0"),
            ("Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu", "14.0.6"),
        ];
        for (out, want) in cases {
            assert_eq!(version_in(out).as_deref(), Some(want), "{out}");
        }
        assert_eq!(version_in("no version here"), None);
        assert_eq!(version_in(""), None);
    }

    #[test]
    fn labels_and_their_check() {
        assert_eq!(labels("rust", "1.95.0"), ["rust", "rust:1", "rust:1.95", "rust:1.95.0"]);
        for l in labels("node", "20.11.1") {
            assert!(is_label(&l), "{l}");
        }
        for bad in ["production", "rust:", "rust:1..2", "rust:1.2.3.4", "rust:x", "gpu:1", "rust:1.95-beta", ""] {
            assert!(!is_label(bad), "{bad}");
        }
    }
}
