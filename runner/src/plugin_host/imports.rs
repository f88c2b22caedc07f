//! The host side of the `viaduct:plugin` imports: `log`, `cache`,
//! `artifacts`, `files`, `exec` and (ABI 1.1) `exec-all`.
//!
//! Expected failures (a missing cache, a refused path, a program not on
//! the allow-list) are returned to the plugin as `err(string)` for it to
//! handle; nothing here traps on input from the plugin.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{
    bindings::viaduct::plugin::{artifacts, cache, exec, exec_all, files, log, types},
    sandbox::{StepState, host_path},
};
use crate::executor::programs::{self, ExecRequest, Programs};
use crate::files::{artifacts::expand, copy, paths};

impl types::Host for StepState {}

impl log::Host for StepState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let prefix = match level {
            log::Level::Debug => "debug: ",
            log::Level::Info => "",
            log::Level::Warn => "warning: ",
            log::Level::Error => "error: ",
        };
        let mut text = String::with_capacity(message.len() + prefix.len() + 1);
        for line in message.lines() {
            text.push_str(prefix);
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            text.push('\n');
        }
        // The step is over when the log is gone: nothing left to tell.
        let _ = self.log.send(text.into_bytes()).await;
        Ok(())
    }
}

impl cache::Host for StepState {
    async fn restore(
        &mut self,
        key: String,
        prefixes: Vec<String>,
    ) -> wasmtime::Result<Result<Option<cache::Hit>, String>> {
        let c = &self.call;
        Ok(c.files
            .restore_tree(&c.job, &c.workspace, &key, &prefixes)
            .await
            .map(|hit| hit.map(|h| cache::Hit { key: h.key, exact: h.exact, size: h.size })))
    }

    async fn save(&mut self, key: String, paths: Vec<String>) -> wasmtime::Result<Result<cache::Saved, String>> {
        let c = &self.call;
        Ok(c.files
            .save_tree(&c.job, &c.workspace, &key, &paths)
            .await
            .map(|s| cache::Saved { size: s.size, entries: s.entries }))
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(self.call.files.get_blob(&self.call.job, &key).await)
    }

    async fn put(&mut self, key: String, data: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.call.files.put_blob(&self.call.job, &key, data).await)
    }
}

impl artifacts::Host for StepState {
    async fn upload(
        &mut self,
        path: String,
        name: Option<String>,
    ) -> wasmtime::Result<Result<Vec<artifacts::Uploaded>, String>> {
        let c = &self.call;
        let result = async {
            let prefix = paths::relative(&c.workspace, &paths::resolve(&c.workspace, &path)?).unwrap_or_default();
            let (ws, p) = (c.workspace.clone(), path.clone());
            let files = tokio::task::spawn_blocking(move || expand(&ws, &p))
                .await
                .map_err(|e| format!("artifact search failed: {e}"))??;
            if files.is_empty() {
                return Err(format!("`{path}` does not exist in the workspace"));
            }
            let mut out = Vec::with_capacity(files.len());
            for (file, file_name) in files {
                let artifact_name = match &name {
                    Some(n) => match file_name.strip_prefix(&prefix) {
                        Some(rest) => format!("{}{rest}", n.trim_end_matches('/')),
                        None => n.clone(),
                    },
                    None => file_name,
                };
                let a = c.files.upload_file(&c.job, &file, &artifact_name).await?;
                out.push(artifacts::Uploaded { name: a.name, size: a.size, digest: a.digest });
            }
            Ok(out)
        };
        Ok(result.await)
    }
}

impl files::Host for StepState {
    async fn copy(&mut self, source: String, dest: String) -> wasmtime::Result<Result<files::Copied, String>> {
        let (from, to) = match (host_path(&self.call, &source), host_path(&self.call, &dest)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let copied = tokio::task::spawn_blocking(move || copy::copy(&from, &to))
            .await
            .map_err(|e| format!("copy task failed: {e}"))
            .and_then(|r| r);
        Ok(copied
            .map(|c| files::Copied { files: c.files, links: c.links, bytes: c.bytes })
            .map_err(|e| format!("cannot copy `{source}` to `{dest}`: {e}")))
    }
}

fn request(cmd: exec::Command) -> ExecRequest {
    ExecRequest { program: cmd.program, args: cmd.args, env: cmd.env, cwd: cmd.cwd, capture_stdout: cmd.capture_stdout }
}

impl exec::Host for StepState {
    async fn run(&mut self, cmd: exec::Command) -> wasmtime::Result<Result<exec::Exit, String>> {
        let req = request(cmd);
        if let Err(e) = programs::check(&req, &self.call.exec_allow) {
            return Ok(Err(e));
        }
        // Where the job's steps run: its user and cgroup, or its container.
        let c = &self.call;
        Ok(c.programs.run(&req, &self.log).await.map(|e| exec::Exit { code: e.code, stdout: e.stdout }))
    }
}

/// Most commands one `exec-all.run-all` call may run.
pub const MAX_RUN_ALL: usize = 64;
/// Longest label shown before a command's lines, in characters.
const MAX_LABEL: usize = 64;
/// Longest partial line held back waiting for its end; past it, the part is
/// written as a line of its own (a command writing no newline cannot make
/// the host buffer without bound). Large, because the cut puts a prefix
/// inside the line, where the secret masking of the step log can no longer
/// see a value that spans it; whole lines never split a value.
const MAX_PARTIAL_LINE: usize = 256 * 1024;

impl exec_all::Host for StepState {
    async fn run_all(
        &mut self,
        cmds: Vec<exec_all::LabelledCommand>,
    ) -> wasmtime::Result<Vec<Result<exec::Exit, String>>> {
        if cmds.len() > MAX_RUN_ALL {
            let e = format!("exec-all runs at most {MAX_RUN_ALL} commands at once; {} were given", cmds.len());
            return Ok(cmds.iter().map(|_| Err(e.clone())).collect());
        }
        let c = &self.call;
        let runs = cmds.into_iter().map(|lc| {
            let req = request(lc.command);
            let checked = programs::check(&req, &c.exec_allow);
            let (programs, log) = (Arc::clone(&c.programs), self.log.clone());
            let label = label(&lc.label);
            async move {
                checked?;
                run_labelled(programs.as_ref(), &req, &label, &log).await
            }
        });
        // All at once; dropping this future (the step stopped) drops every
        // run, which stops its program.
        let exits = futures_util::future::join_all(runs).await;
        Ok(exits.into_iter().map(|r| r.map(|e| exec::Exit { code: e.code, stdout: e.stdout })).collect())
    }
}

/// Runs `req` (already checked) with its output written to `log` line by
/// line, each line prefixed with `[label] `.
async fn run_labelled(
    programs: &dyn Programs,
    req: &ExecRequest,
    label: &str,
    log: &mpsc::Sender<Vec<u8>>,
) -> Result<programs::ExecExit, String> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let run = async move {
        // `tx` is dropped when the program ends, which ends the relay.
        let tx = tx;
        programs.run(req, &tx).await
    };
    let relay = async {
        let mut lines = Prefixer::new(label);
        while let Some(chunk) = rx.recv().await {
            let out = lines.push(&chunk);
            // The step is over when the log is gone: nothing left to tell.
            if !out.is_empty() {
                let _ = log.send(out).await;
            }
        }
        if let Some(rest) = lines.finish() {
            let _ = log.send(rest).await;
        }
    };
    let (exit, ()) = tokio::join!(run, relay);
    exit
}

/// A label as shown: control characters replaced, at most [`MAX_LABEL`]
/// characters.
fn label(raw: &str) -> String {
    raw.chars().take(MAX_LABEL).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Splits a command's output into lines, each prefixed with `[label] `,
/// holding back a partial line until it ends (or [`finish`](Self::finish)).
struct Prefixer {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl Prefixer {
    fn new(label: &str) -> Self {
        Self { prefix: format!("[{label}] ").into_bytes(), partial: Vec::new() }
    }

    /// The complete lines of `chunk` (with what was held back before it),
    /// prefixed; the rest is held back.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(&self.partial);
            out.extend_from_slice(&rest[..=at]);
            self.partial.clear();
            rest = &rest[at + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() >= MAX_PARTIAL_LINE {
            out.extend_from_slice(&self.prefix);
            out.append(&mut self.partial);
            out.push(b'\n');
        }
        out
    }

    /// The last line if it had no newline, prefixed and ended.
    fn finish(self) -> Option<Vec<u8>> {
        if self.partial.is_empty() {
            return None;
        }
        let mut out = self.prefix;
        out.extend_from_slice(&self.partial);
        out.push(b'\n');
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn lines_are_prefixed_and_partial_lines_held_back() {
        let mut p = Prefixer::new("web-1");
        assert_eq!(text(p.push(b"one\ntw")), "[web-1] one\n");
        assert_eq!(text(p.push(b"o\n\nthree")), "[web-1] two\n[web-1] \n");
        assert_eq!(text(p.push(b"")), "");
        assert_eq!(text(p.finish().unwrap()), "[web-1] three\n");
        let mut p = Prefixer::new("x");
        assert_eq!(text(p.push(b"done\n")), "[x] done\n");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn a_line_without_end_is_cut() {
        let mut p = Prefixer::new("x");
        let out = p.push(&vec![b'a'; MAX_PARTIAL_LINE + 1]);
        assert_eq!(out.len(), 4 + MAX_PARTIAL_LINE + 2);
        assert!(out.starts_with(b"[x] aaa") && out.ends_with(b"a\n"));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn labels_are_one_short_line() {
        assert_eq!(label("host\n[evil] x"), "host?[evil] x");
        assert_eq!(label(&"é".repeat(100)).chars().count(), MAX_LABEL);
    }

    /// Echoes its arguments as output lines (the last one without a
    /// newline), checking that every program of a call is running at once.
    struct Echo {
        started: std::sync::atomic::AtomicUsize,
        all: usize,
        go: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl Programs for Echo {
        async fn run(&self, req: &ExecRequest, log: &mpsc::Sender<Vec<u8>>) -> Result<programs::ExecExit, String> {
            if req.program == "missing" {
                return Err("`missing` is not installed".into());
            }
            let notified = self.go.notified();
            if self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.all {
                self.go.notify_waiters();
            } else {
                notified.await;
            }
            let text = req.args.join("\n");
            log.send(text.into_bytes()).await.unwrap();
            Ok(programs::ExecExit { code: req.args.len() as i32, stdout: Vec::new() })
        }
    }

    #[tokio::test]
    async fn run_labelled_runs_concurrently_with_prefixes() {
        let echo = Echo { started: 0.into(), all: 2, go: tokio::sync::Notify::new() };
        let (log, mut rx) = mpsc::channel(64);
        let req = |args: &[&str]| ExecRequest {
            program: "echo".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (a, b) = (req(&["a1", "a2"]), req(&["b1"]));
        let (ra, rb) = tokio::join!(run_labelled(&echo, &a, "a", &log), run_labelled(&echo, &b, "b", &log));
        assert_eq!((ra.unwrap().code, rb.unwrap().code), (2, 1));
        drop(log);
        let mut all = String::new();
        while let Some(chunk) = rx.recv().await {
            all.push_str(&text(chunk));
        }
        let mut lines: Vec<&str> = all.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["[a] a1", "[a] a2", "[b] b1"]);
        let missing = ExecRequest { program: "missing".into(), ..Default::default() };
        assert!(run_labelled(&echo, &missing, "m", &mpsc::channel(1).0).await.unwrap_err().contains("not installed"));
    }
}
