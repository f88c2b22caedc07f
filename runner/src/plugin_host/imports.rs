//! The host side of the `viaduct:plugin` imports: `log`, `cache`,
//! `artifacts` and `exec`.
//!
//! Expected failures (a missing cache, a refused path, a program not on
//! the allow-list) are returned to the plugin as `err(string)` for it to
//! handle; nothing here traps on input from the plugin.

use super::{
    bindings::viaduct::plugin::{artifacts, cache, exec, files, log, types},
    sandbox::{StepState, host_path},
};
use crate::executor::programs::{self, ExecRequest};
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

impl exec::Host for StepState {
    async fn run(&mut self, cmd: exec::Command) -> wasmtime::Result<Result<exec::Exit, String>> {
        let req = ExecRequest {
            program: cmd.program,
            args: cmd.args,
            env: cmd.env,
            cwd: cmd.cwd,
            capture_stdout: cmd.capture_stdout,
        };
        if let Err(e) = programs::check(&req, &self.call.exec_allow) {
            return Ok(Err(e));
        }
        // Where the job's steps run: its user and cgroup, or its container.
        let c = &self.call;
        Ok(c.programs.run(&req, &self.log).await.map(|e| exec::Exit { code: e.code, stdout: e.stdout }))
    }
}
