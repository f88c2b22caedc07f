//! Host commands, limited to the programs the manifest lists under
//! `[capabilities] exec`.
//!
//! A command runs on the runner (outside the sandbox) in the job's
//! workspace, with the step's granted environment plus [`Command::env`].
//! Its stderr always goes to the step log; so does its stdout unless
//! [`Command::capture_stdout`] asks for it back (for JSON and the like). It
//! is stopped with the step (cancel or timeout).
//!
//! [`Command::run`] runs one command at a time; [`run_all`] runs several at
//! once (ABI 1.1: a plugin using it declares `abi = "1.1"` in its
//! manifest), each line of their output in the log prefixed with the
//! command's label.
//!
//! ```no_run
//! use viaduct_plugin_sdk::{exec::Command, Result};
//! # fn demo() -> Result<()> {
//! // Streamed to the log; a non-zero exit becomes an error.
//! Command::new("nix").args(["flake", "check"]).run_checked()?;
//! // Captured and parsed.
//! let meta: serde_json::Value = Command::new("nix").args(["flake", "metadata", "--json"]).capture_stdout().run_checked()?.json()?;
//! // Two at once; results in the same order.
//! let results = viaduct_plugin_sdk::exec::run_all(&[
//!     ("web-1", Command::new("ssh").args(["web-1", "true"])),
//!     ("web-2", Command::new("ssh").args(["web-2", "true"])),
//! ]);
//! for result in results {
//!     println!("exit code {}", result?.code);
//! }
//! # Ok(()) }
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

use crate::{
    Error, Result,
    bindings::viaduct::plugin::{exec as wit, exec_all as wit_all},
    host,
};

/// Most commands one [`run_all`] call may run (the host's limit).
pub const MAX_RUN_ALL: usize = 64;

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
        self.result(host::exec_run(&self.to_wit()))
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

impl Command {
    /// The command as the host takes it.
    fn to_wit(&self) -> wit::Command {
        wit::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            capture_stdout: self.capture_stdout,
        }
    }

    /// What the host answered for this command, as the SDK's types.
    fn result(&self, answer: Result<wit::Exit, String>) -> Result<Exit> {
        let exit = answer.map_err(|e| Error::msg(format!("cannot run `{}`: {e}", self.program)))?;
        Ok(Exit { code: exit.code, stdout: exit.stdout })
    }
}

/// Runs every command of `cmds` at once and waits for all of them; the
/// results are in the order of `cmds`. Needs ABI 1.1 (`abi = "1.1"` in
/// the manifest) and, like [`Command::run`], every program on the
/// manifest's `exec` list.
///
/// Each command is checked and run exactly like [`Command::run`], and
/// stopped with the step. Its output goes to the step log line by line,
/// each line prefixed with `[label] ` (use a short label: a host name, a
/// target). A result is `Err` only when that command could not be started
/// (not on the allow-list, not installed) — the others run anyway; a
/// non-zero exit is `Ok` (see [`Exit::success`]).
///
/// At most [`MAX_RUN_ALL`] commands: with more, none runs and every result
/// is an error saying so. Compiled natively (unit tests), every result is
/// an error, as for [`Command::run`].
pub fn run_all<L: AsRef<str>>(cmds: &[(L, Command)]) -> Vec<Result<Exit>> {
    if cmds.len() > MAX_RUN_ALL {
        let message = format!("exec-all runs at most {MAX_RUN_ALL} commands at once; {} were given", cmds.len());
        return cmds.iter().map(|_| Err(Error::msg(&message))).collect();
    }
    let labelled: Vec<wit_all::LabelledCommand> = cmds
        .iter()
        .map(|(label, cmd)| wit_all::LabelledCommand { label: label.as_ref().to_owned(), command: cmd.to_wit() })
        .collect();
    results(cmds, host::exec_run_all(&labelled))
}

/// Pairs the host's answers with `cmds`; a missing answer (a host that
/// returned fewer) is an error for its command.
fn results<L>(cmds: &[(L, Command)], answers: Vec<Result<wit::Exit, String>>) -> Vec<Result<Exit>> {
    let mut answers = answers.into_iter();
    cmds.iter()
        .map(|(_, cmd)| cmd.result(answers.next().unwrap_or_else(|| Err("the host returned no result".to_owned()))))
        .collect()
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
    fn native_run_all_answers_every_command_in_order() {
        let cmds = [("a", Command::new("ssh").arg("a")), ("b", Command::new("scp").arg("b"))];
        let results = run_all(&cmds);
        assert_eq!(results.len(), 2);
        let messages: Vec<String> = results.into_iter().map(|r| r.unwrap_err().message().to_owned()).collect();
        assert!(messages[0].starts_with("cannot run `ssh`: the host import `exec-all.run-all`"), "{messages:?}");
        assert!(messages[1].starts_with("cannot run `scp`: "), "{messages:?}");
        assert!(run_all::<&str>(&[]).is_empty());
    }

    #[test]
    fn run_all_refuses_too_many_commands() {
        let cmds: Vec<(String, Command)> = (0..=MAX_RUN_ALL).map(|i| (i.to_string(), Command::new("true"))).collect();
        let results = run_all(&cmds);
        assert_eq!(results.len(), MAX_RUN_ALL + 1);
        for r in results {
            assert_eq!(r.unwrap_err().message(), "exec-all runs at most 64 commands at once; 65 were given");
        }
    }

    #[test]
    fn run_all_results_pair_with_commands() {
        let cmds = [("x", Command::new("a")), ("y", Command::new("b")), ("z", Command::new("c"))];
        let answers = vec![Ok(wit::Exit { code: 3, stdout: b"o".to_vec() }), Err("not allowed".to_owned())];
        let r = results(&cmds, answers);
        assert_eq!(r[0].as_ref().unwrap(), &Exit { code: 3, stdout: b"o".to_vec() });
        assert_eq!(r[1].as_ref().unwrap_err().message(), "cannot run `b`: not allowed");
        assert_eq!(r[2].as_ref().unwrap_err().message(), "cannot run `c`: the host returned no result");
        let w = Command::new("ssh").args(["-p", "22"]).env("A", "1").cwd("sub").capture_stdout().to_wit();
        assert_eq!(
            (w.program.as_str(), w.args.len(), w.cwd.as_deref(), w.capture_stdout),
            ("ssh", 2, Some("sub"), true)
        );
    }

    #[test]
    fn exit_json() {
        let exit = Exit { code: 0, stdout: br#"{"a": 1}"#.to_vec() };
        let v: serde_json::Value = exit.json().unwrap();
        assert_eq!(v["a"], 1);
        assert!(Exit { code: 0, stdout: b"nope".to_vec() }.json::<serde_json::Value>().is_err());
    }
}
