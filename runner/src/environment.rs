//! The environment the runner gives its jobs, before any pipeline's.
//!
//! Steps start from an empty environment; the runner's operator adds to it
//! with `--env KEY=VAL`, `--env-file FILE` (one `KEY=VALUE` a line, as in
//! GitHub's runner `.env` file) and `--inherit-env NAME,…` (the runner's
//! own value of each name, e.g. `PATH`, `RUSTUP_HOME`, `CARGO_HOME`, so a
//! toolchain installed the usual way is found). Precedence, lowest first:
//! the runner's (`--inherit-env`, then env files in order, then `--env`),
//! the pipeline's `env`, the job's, the step's, then the job's secrets; the
//! runner sets `HOME`, `TMPDIR` and `VIADUCT_*` itself last.
//!
//! Inherited values are for host jobs only (the runner machine's `PATH`
//! means nothing inside an image); `--env` and env files apply to every
//! job, but a `PATH` of theirs only to host jobs. Nothing of the runner's own reaches a job unless named: not its
//! token, not its `VIADUCT_*` settings (refused as names here).

use std::{collections::BTreeMap, path::Path};

/// Names the runner sets for every step: not settable by the operator.
const RUNNER_SET: [&str; 2] = ["HOME", "TMPDIR"];
/// Largest env file read.
const MAX_FILE: u64 = 1 << 20;

/// What the runner adds to every job's environment.
#[derive(Debug, Clone, Default)]
pub struct RunnerEnv {
    /// For every job: env files and `--env`.
    all: BTreeMap<String, String>,
    /// For host jobs only, under `all`: `--inherit-env`.
    inherited: BTreeMap<String, String>,
}

impl RunnerEnv {
    /// Builds it from the runner's options: `inherit` names looked up with
    /// `lookup` (the runner's own environment), `files` read in order, then
    /// `pairs` (`KEY=VALUE`). A name that is not a variable name, one the
    /// runner sets itself or a `VIADUCT_*` one is an error, as is a file
    /// that cannot be read or parsed (with its line).
    pub fn build(
        pairs: &[String],
        files: &[impl AsRef<Path>],
        inherit: &[String],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut env = Self::default();
        for name in inherit.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            check_name(name).map_err(|e| format!("--inherit-env {name}: {e}"))?;
            match lookup(name) {
                Some(v) => {
                    env.inherited.insert(name.to_string(), v);
                }
                None => tracing::warn!(name, "--inherit-env names a variable the runner does not have: not set"),
            }
        }
        for file in files {
            let file = file.as_ref();
            let text = read_bounded(file).map_err(|e| format!("--env-file {}: {e}", file.display()))?;
            for (k, v) in parse_file(&text).map_err(|e| format!("{}:{e}", file.display()))? {
                env.all.insert(k, v);
            }
        }
        for pair in pairs {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("--env `{pair}`: expected KEY=VALUE"))?;
            check_name(k).map_err(|e| format!("--env {k}: {e}"))?;
            env.all.insert(k.to_string(), v.to_string());
        }
        Ok(env)
    }

    /// The variables a job starts with: for a host job the inherited ones
    /// under the rest; for a container job (`image` set) only the rest,
    /// without `PATH` (the image's own is the one that works there).
    pub fn for_job(&self, container: bool) -> BTreeMap<String, String> {
        let mut env = if container { BTreeMap::new() } else { self.inherited.clone() };
        env.extend(self.all.iter().filter(|(k, _)| !container || *k != "PATH").map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// `PATH` of host jobs when the runner sets one (where programs and
    /// toolchains are looked up).
    pub fn host_path(&self) -> Option<&str> {
        self.all.get("PATH").or_else(|| self.inherited.get("PATH")).map(String::as_str)
    }

    /// Whether the operator gave nothing (jobs get a clean environment).
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.inherited.is_empty()
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err("not a variable name (letters, digits and _, not starting with a digit)".into());
    }
    if RUNNER_SET.contains(&name) {
        return Err(format!(
            "the runner sets {name} per job; for a toolchain under the runner's home pass its own variables \
             (e.g. RUSTUP_HOME, CARGO_HOME) or PATH"
        ));
    }
    if name.to_ascii_uppercase().starts_with("VIADUCT_") {
        return Err("VIADUCT_* variables are the runner's own and never reach jobs".into());
    }
    Ok(())
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {} KiB", MAX_FILE >> 10));
    }
    Ok(text)
}

/// Parses an env file: `KEY=VALUE` a line (an optional `export ` before),
/// blank lines and `#` comments skipped; a value in matching single or
/// double quotes is taken between them, verbatim. Errors name the line
/// (`LINE: what`).
fn parse_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (k, v) = line.split_once('=').ok_or_else(|| format!("{}: expected KEY=VALUE", n + 1))?;
        let k = k.trim();
        check_name(k).map_err(|e| format!("{}: {k}: {e}", n + 1))?;
        let v = v.trim();
        let v = match v.as_bytes() {
            [q @ (b'"' | b'\''), .., last] if last == q && v.len() >= 2 => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PATH" => Some("/opt/rust/bin:/usr/bin".into()),
            "RUSTUP_HOME" => Some("/opt/rustup".into()),
            _ => None,
        }
    }

    #[test]
    fn precedence_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# tools\nexport LANG=C.UTF-8\nGREETING='hi there'\nPATH=/file/bin\n\n").unwrap();
        let env = RunnerEnv::build(
            &["GREETING=hello".into(), "EMPTY=".into()],
            &[&file],
            &["PATH".into(), "RUSTUP_HOME".into(), "MISSING".into()],
            lookup,
        )
        .unwrap();
        let host = env.for_job(false);
        assert_eq!(host["GREETING"], "hello", "--env over the file");
        assert_eq!(host["PATH"], "/file/bin", "the file over inherited");
        assert_eq!(host["RUSTUP_HOME"], "/opt/rustup");
        assert_eq!(host["LANG"], "C.UTF-8");
        assert_eq!(host["EMPTY"], "");
        assert!(!host.contains_key("MISSING"));
        let container = env.for_job(true);
        assert!(!container.contains_key("RUSTUP_HOME"), "inherited values are for host jobs only");
        assert!(!container.contains_key("PATH"), "an image keeps its own PATH");
        assert_eq!(container["GREETING"], "hello");
        assert_eq!(env.host_path(), Some("/file/bin"));
    }

    #[test]
    fn refused_names_and_lines() {
        let none: [&Path; 0] = [];
        for bad in ["VIADUCT_RUNNER_TOKEN", "viaduct_x", "HOME", "TMPDIR", "1X", "A-B", ""] {
            let inherit = RunnerEnv::build(&[], &none, &[bad.to_string()], lookup);
            let pair = RunnerEnv::build(&[format!("{bad}=1")], &none, &[], lookup);
            assert!(pair.is_err(), "{bad}");
            if !bad.is_empty() {
                assert!(inherit.is_err(), "{bad}");
            }
        }
        assert!(RunnerEnv::build(&["NOEQUALS".into()], &none, &[], lookup).unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_file("A=1\n\nno equals\n").unwrap_err(), "3: expected KEY=VALUE");
        assert!(parse_file("VIADUCT_RUNNER_TOKEN=x").unwrap_err().starts_with("1: VIADUCT_RUNNER_TOKEN"));
        assert_eq!(parse_file("Q=\"a 'b'\"\nS='").unwrap(), [("Q".into(), "a 'b'".into()), ("S".into(), "'".into())]);
    }
}
