//! `probe`: a test plugin that exercises every host import, for the
//! end-to-end tests.
//!
//! Not a first-party plugin: the tests publish it from
//! `target/plugins-test/probe.wasm`. `with: { action: … }` names one action
//! or a list of them, run in order (default `echo`); the other inputs
//! parameterise them. After the actions, `fail: <message>` makes the step
//! fail with that message, keeping the outputs and the summary (the
//! `step-error` carries both).
//!
//! | action | does | outputs |
//! |---|---|---|
//! | `echo` | logs a line at each level (and on stdout and stderr); echoes every `with` value; reports the variables named in `env` and the run metadata | `with_<key>` (strings as is, others as JSON), `env_<NAME>` (for the set ones), `env_missing`, `env_matches_wasi`, `phase`, `run_id`, `job_name`, `step_index`, `commit`, `cwd` |
//! | `log` | writes `lines` lines (default 3) to stdout | `lines` |
//! | `file` | writes `content` (default `probe`) to `file` (default `probe.txt`) in the workspace and reads it back | `file_content`, `file_size` |
//! | `exec` | runs `sh -c <script>` (default `echo hello from sh`) with the step's variables named in `env` passed on, capturing stdout unless `capture: false` | `exit_code`, `stdout` |
//! | `cache-put` / `cache-get` | a blob under `cache_key` (value `value`) | `cache_found`, `cache_value` |
//! | `cache-save` | saves `paths` under `cache_key` | `saved_size`, `saved_entries` |
//! | `cache-restore` | restores `cache_key` or one of `restore_keys` | `restored`, `restored_key`, `restored_exact`, `restored_size` |
//! | `upload` | uploads `path` as artifacts (renamed under `name`) | `uploaded`, `uploaded_names`, `uploaded_digests` |
//! | `copy` | copies `path` to `dest` with the host's `files.copy` (both as the plugin sees them; relative ones are in the workspace) | `copied_files`, `copied_links`, `copied_bytes` |
//! | `post` | asks for a post phase with `state` (default `probe-state`) | — |
//! | `sleep` | sleeps `seconds` (default 1) | `slept_ms` |
//! | `connect` | TCP connect to `address` (manifest `network = true`: works only with `allow: { network: true }`) | `connected`, `connect_error` |
//! | `outputs` | sets `count` outputs `out_1` … | — |
//!
//! In the post phase the probe only reports: outputs `phase=post` and
//! `state` (what the main phase returned).

#![warn(missing_docs)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Deserialize;
use viaduct_plugin_sdk::{
    exec::Command,
    log::{self, Level},
    markdown::{Table, code},
    prelude::*,
};

/// The `with:` inputs (every one is optional).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct With {
    /// One action or a list of them.
    #[serde(deserialize_with = "de::list")]
    action: Vec<String>,
    /// Fail at the end with this message.
    #[serde(deserialize_with = "de::opt_string")]
    fail: Option<String>,
    /// `echo`: variables to report.
    #[serde(deserialize_with = "de::list")]
    env: Vec<String>,
    /// `echo`: free text, echoed like every input.
    #[serde(deserialize_with = "de::opt_string")]
    message: Option<String>,
    /// `log`: lines to write.
    #[serde(deserialize_with = "de::opt_number")]
    lines: Option<u32>,
    /// `file`: workspace-relative file.
    #[serde(deserialize_with = "de::opt_string")]
    file: Option<String>,
    /// `file`: content to write.
    #[serde(deserialize_with = "de::opt_string")]
    content: Option<String>,
    /// `exec`: shell script.
    #[serde(deserialize_with = "de::opt_string")]
    script: Option<String>,
    /// `exec`: capture stdout (default true).
    #[serde(deserialize_with = "de::opt_bool")]
    capture: Option<bool>,
    /// `cache-*`: the key.
    #[serde(deserialize_with = "de::opt_string")]
    cache_key: Option<String>,
    /// `cache-put`: the value.
    #[serde(deserialize_with = "de::opt_string")]
    value: Option<String>,
    /// `cache-save`: paths.
    #[serde(deserialize_with = "de::list")]
    paths: Vec<String>,
    /// `cache-restore`: fallback prefixes.
    #[serde(deserialize_with = "de::list")]
    restore_keys: Vec<String>,
    /// `upload`: workspace path; `copy`: the source.
    #[serde(deserialize_with = "de::opt_string")]
    path: Option<String>,
    /// `copy`: the destination.
    #[serde(deserialize_with = "de::opt_string")]
    dest: Option<String>,
    /// `upload`: artifact name prefix.
    #[serde(deserialize_with = "de::opt_string")]
    name: Option<String>,
    /// `post`: the state.
    #[serde(deserialize_with = "de::opt_string")]
    state: Option<String>,
    /// `sleep`: seconds (fractions allowed).
    #[serde(deserialize_with = "de::opt_number")]
    seconds: Option<f64>,
    /// `connect`: `host:port`.
    #[serde(deserialize_with = "de::opt_string")]
    address: Option<String>,
    /// `outputs`: how many.
    #[serde(deserialize_with = "de::opt_number")]
    count: Option<u32>,
}

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    if ctx.is_post() {
        let state = ctx.state_raw().unwrap_or_default().to_owned();
        ctx.info(format!("post phase, state {state:?}"));
        return Ok(Output::new()
            .set("phase", "post")
            .set("state", &state)
            .summary(format!("Post phase: {}\n", code(&state))));
    }
    let w: With = ctx.with()?;
    let actions = if w.action.is_empty() { vec!["echo".to_owned()] } else { w.action.clone() };
    let mut out = Output::new();
    for action in &actions {
        if let Err(e) = act(&ctx, &w, action, &mut out) {
            return Err(e.with_outputs(&out).context(format!("action `{action}`")));
        }
    }
    let mut table = Table::new(["Output", "Value"]);
    for (k, v) in out.outputs() {
        table.row([code(k), code(v)]);
    }
    out.set_summary(format!("### Probe: {}\n\n{table}", actions.join(", ")));
    if let Some(message) = &w.fail {
        return Err(out.fail(message));
    }
    Ok(out)
}

fn act(ctx: &Context, w: &With, action: &str, out: &mut Output) -> Result<()> {
    match action {
        "echo" => echo(ctx, w, out),
        "log" => {
            let n = w.lines.unwrap_or(3);
            for i in 1..=n {
                println!("probe line {i} of {n}");
            }
            out.insert("lines", n);
        }
        "file" => {
            let file = viaduct_plugin_sdk::fs::workspace_path("file", w.file.as_deref().unwrap_or("probe.txt"))?;
            let content = w.content.as_deref().unwrap_or("probe");
            std::fs::write(&file, content).with_context(|| format!("cannot write `{file}`"))?;
            let back = std::fs::read_to_string(&file).with_context(|| format!("cannot read `{file}`"))?;
            out.insert("file_content", &back);
            out.insert("file_size", back.len());
        }
        "exec" => {
            let script = w.script.as_deref().unwrap_or("echo hello from sh");
            let mut cmd = Command::new("sh").args(["-c", script]);
            // Forward the step's variables named in `env` (as a plugin that
            // passes its pipeline's settings on would).
            for name in &w.env {
                if let Some(v) = ctx.env(name) {
                    cmd = cmd.env(name.clone(), v);
                }
            }
            if w.capture.unwrap_or(true) {
                cmd = cmd.capture_stdout();
            }
            let exit = cmd.run()?;
            out.insert("exit_code", exit.code);
            out.insert("stdout", String::from_utf8_lossy(&exit.stdout).trim_end());
        }
        "cache-put" => cache::put(key(w)?, w.value.as_deref().unwrap_or_default().as_bytes())?,
        "cache-get" => {
            let value = cache::get(key(w)?)?;
            out.insert("cache_found", value.is_some());
            out.insert("cache_value", String::from_utf8_lossy(value.as_deref().unwrap_or_default()));
        }
        "cache-save" => {
            let saved = cache::save(key(w)?, &w.paths)?;
            out.insert("saved_size", saved.size);
            out.insert("saved_entries", saved.entries);
        }
        "cache-restore" => {
            let hit = cache::restore(key(w)?, &w.restore_keys)?;
            out.insert("restored", hit.is_some());
            out.insert("restored_key", hit.as_ref().map_or("", |h| h.key.as_str()));
            out.insert("restored_exact", hit.as_ref().is_some_and(|h| h.exact));
            out.insert("restored_size", hit.as_ref().map_or(0, |h| h.size));
        }
        "upload" => {
            let path = w.path.as_deref().ok_or_else(|| Error::msg("`upload` needs `path`"))?;
            let uploaded = artifacts::upload(path, w.name.as_deref())?;
            out.insert("uploaded", uploaded.len());
            out.insert("uploaded_names", uploaded.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(","));
            out.insert("uploaded_digests", uploaded.iter().map(|u| u.digest.as_str()).collect::<Vec<_>>().join(","));
        }
        "copy" => {
            let path = w.path.as_deref().ok_or_else(|| Error::msg("`copy` needs `path`"))?;
            let dest = w.dest.as_deref().ok_or_else(|| Error::msg("`copy` needs `dest`"))?;
            let copied = files::copy(path, dest)?;
            out.insert("copied_files", copied.files);
            out.insert("copied_links", copied.links);
            out.insert("copied_bytes", copied.bytes);
        }
        "post" => {
            *out = std::mem::take(out).post_state(w.state.as_deref().unwrap_or("probe-state"));
        }
        "sleep" => {
            let seconds = w.seconds.unwrap_or(1.0);
            ensure!(seconds.is_finite() && seconds >= 0.0, "`seconds` must be a non-negative number");
            let start = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            out.insert("slept_ms", start.elapsed().as_millis());
        }
        "connect" => {
            let address = w.address.as_deref().ok_or_else(|| Error::msg("`connect` needs `address`"))?;
            match std::net::TcpStream::connect(address) {
                Ok(_) => out.insert("connected", true),
                Err(e) => {
                    out.insert("connected", false);
                    out.insert("connect_error", e);
                }
            }
        }
        "outputs" => {
            for i in 1..=w.count.unwrap_or(10) {
                out.insert(format!("out_{i}"), format!("value-{i}"));
            }
        }
        other => bail!("unknown action `{other}`"),
    }
    Ok(())
}

fn key(w: &With) -> Result<&str> {
    w.cache_key.as_deref().ok_or_else(|| Error::msg("cache actions need `cache_key`"))
}

fn echo(ctx: &Context, w: &With, out: &mut Output) {
    for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
        log::write(level, format!("probe {level:?} line"));
    }
    println!("probe stdout line");
    eprintln!("probe stderr line");
    for (key, json) in ctx.with_raw() {
        let value = match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::String(s)) => s,
            _ => json.clone(),
        };
        out.insert(format!("with_{key}"), value);
    }
    let mut missing = Vec::new();
    for name in &w.env {
        match ctx.env(name) {
            Some(v) => out.insert(format!("env_{name}"), v),
            None => missing.push(name.as_str()),
        }
    }
    out.insert("env_missing", missing.join(","));
    let wasi: BTreeMap<String, String> = std::env::vars().collect();
    out.insert("env_matches_wasi", &wasi == ctx.env_vars());
    let m = ctx.meta();
    out.insert("phase", "main");
    out.insert("run_id", &m.run_id);
    out.insert("job_name", &m.job_name);
    out.insert("step_index", m.step_index);
    out.insert("commit", &m.commit);
    out.insert("cwd", std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default());
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_outputs() {
        let ctx = Context::builder()
            .with("message", "hi")
            .with("env", ["GREETING", "NOPE"])
            .with("lines", 2)
            .env("GREETING", "hello")
            .build();
        let out = run(ctx).unwrap();
        assert_eq!(out.get("with_message"), Some("hi"));
        assert_eq!(out.get("with_lines"), Some("2"));
        assert_eq!(out.get("with_env"), Some(r#"["GREETING","NOPE"]"#));
        assert_eq!(out.get("env_GREETING"), Some("hello"));
        assert_eq!(out.get("env_missing"), Some("NOPE"));
        assert!(out.summary_text().unwrap().starts_with("### Probe: echo\n"));
    }

    #[test]
    fn actions_in_order_and_failure_keeps_outputs() {
        let ctx = Context::builder().with("action", ["outputs", "post"]).with("count", 2).with("state", "s1").build();
        let out = run(ctx).unwrap();
        assert_eq!((out.get("out_2"), out.post_state_text()), (Some("value-2"), Some("s1")));

        let ctx = Context::builder().with("action", "outputs").with("count", 1).with("fail", "as asked").build();
        let e = run(ctx).unwrap_err();
        assert_eq!(e.message(), "as asked");
        assert_eq!(e.outputs(), &[("out_1".to_owned(), "value-1".to_owned())]);
        assert!(e.summary_text().unwrap().starts_with("### Probe: outputs\n"), "{e:?}");

        let ctx = Context::builder().with("action", ["outputs", "exec"]).with("count", 1).build();
        let e = run(ctx).unwrap_err();
        assert!(e.message().starts_with("action `exec`: cannot run `sh`"), "{e}");
        assert_eq!(e.outputs().len(), 1);
    }

    #[test]
    fn post_phase_reports_state() {
        let ctx = Context::builder().phase(Phase::Post).state("s").build();
        let out = run(ctx).unwrap();
        assert_eq!((out.get("phase"), out.get("state")), (Some("post"), Some("s")));
    }

    #[test]
    fn copy_needs_the_host() {
        let e = run(Context::builder().with("action", "copy").with("path", "a").build()).unwrap_err();
        assert_eq!(e.message(), "action `copy`: `copy` needs `dest`");
        let e = run(Context::builder().with("action", "copy").with("path", "a").with("dest", "b").build()).unwrap_err();
        assert!(e.message().starts_with("action `copy`: cannot copy `a` to `b`: the host import"), "{e}");
    }

    #[test]
    fn unknown_action() {
        let e = run(Context::builder().with("action", "dance").build()).unwrap_err();
        assert_eq!(e.message(), "action `dance`: unknown action `dance`");
    }
}
