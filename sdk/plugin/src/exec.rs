//! Host commands, limited to the programs the manifest lists under
//! `[capabilities] exec`.
//!
//! A command runs on the runner (outside the sandbox) in the job's
//! workspace, with the step's granted environment plus [`Command::env`].
//! Its stderr always goes to the step log; so does its stdout unless
//! [`Command::capture_stdout`] asks for it back (for JSON and the like). It
//! is stopped with the step (cancel or timeout).
//!
//! ```no_run
//! use viaduct_plugin_sdk::{exec::Command, Result};
//! # fn demo() -> Result<()> {
//! // Streamed to the log; a non-zero exit becomes an error.
//! Command::new("nix").args(["flake", "check"]).run_checked()?;
//! // Captured and parsed.
//! let meta: serde_json::Value = Command::new("nix").args(["flake", "metadata", "--json"]).capture_stdout().run_checked()?.json()?;
//! # Ok(()) }
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

use crate::{Error, Result, bindings::viaduct::plugin::exec as wit, host};

/// A command to run on the runner (a builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    capture_stdout: bool,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit code; 128 + N when killed by signal N.
    pub code: i32,
    /// Captured stdout (empty unless [`Command::capture_stdout`]).
    pub stdout: Vec<u8>,
}

impl Command {
    /// Runs `program`: a bare name on the manifest's `exec` list, looked up
    /// on the runner's `PATH`.
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), args: Vec::new(), env: Vec::new(), cwd: None, capture_stdout: false }
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable on top of the step's granted env.
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        crate::output::upsert(&mut self.env, name.into(), value.into());
        self
    }

    /// Sets several environment variables.
    #[must_use]
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Runs in this directory, relative to the workspace (default: its root).
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Returns stdout in [`Exit::stdout`] (at most 64 MiB) instead of
    /// logging it. Stderr is still logged.
    #[must_use]
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    /// The program.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[String] {
        &self.args
    }

    /// Runs the command and waits for it. `Err` only when it could not be
    /// started (not on the allow-list, not installed); a non-zero exit is
    /// `Ok` — see [`run_checked`](Command::run_checked).
    pub fn run(&self) -> Result<Exit> {
        let cmd = wit::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            capture_stdout: self.capture_stdout,
        };
        let exit = host::exec_run(&cmd).map_err(|e| Error::msg(format!("cannot run `{}`: {e}", self.program)))?;
        Ok(Exit { code: exit.code, stdout: exit.stdout })
    }

    /// Runs the command; a non-zero exit is an error naming the command and
    /// its exit code.
    pub fn run_checked(&self) -> Result<Exit> {
        let exit = self.run()?;
        if !exit.success() {
            return Err(Error::msg(format!("`{self}` failed with exit code {}", exit.code)));
        }
        Ok(exit)
    }
}

impl fmt::Display for Command {
    /// The command line, shell-quoted where needed (for messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        Ok(())
    }
}

impl Exit {
    /// Whether the exit code is 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The captured stdout as UTF-8 text.
    pub fn stdout_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.stdout).map_err(|e| Error::msg(format!("the command's output is not UTF-8: {e}")))
    }

    /// The captured stdout parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.stdout)
            .map_err(|e| Error::msg(format!("the command's output is not the expected JSON: {e}")))
    }
}

/// Quotes `s` for a POSIX shell when it contains anything but safe characters.
fn quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=+@%,".contains(&b));
    if safe { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes() {
        let c = Command::new("nix").args(["flake", "check", "--option", "x y", "it's", ""]);
        assert_eq!(c.to_string(), r"nix flake check --option 'x y' 'it'\''s' ''");
    }

    #[test]
    fn env_replaces() {
        let c = Command::new("sh").env("A", "1").envs([("B", "2"), ("A", "3")]);
        assert_eq!(c.env, vec![("A".to_string(), "3".to_string()), ("B".to_string(), "2".to_string())]);
    }

    #[test]
    fn native_run_is_an_error_not_a_panic() {
        let e = Command::new("sh").run().unwrap_err();
        assert!(e.message().contains("only available"), "{e}");
    }

    #[test]
    fn exit_json() {
        let exit = Exit { code: 0, stdout: br#"{"a": 1}"#.to_vec() };
        let v: serde_json::Value = exit.json().unwrap();
        assert_eq!(v["a"], 1);
        assert!(Exit { code: 0, stdout: b"nope".to_vec() }.json::<serde_json::Value>().is_err());
    }
}
