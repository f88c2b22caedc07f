//! `hostile`: a test plugin that tries to get out of the sandbox.
//!
//! Not a first-party plugin: the end-to-end tests publish it from
//! `target/plugins-test/hostile.wasm` and run it with
//! `with: { attack: <name> }`. For an attack the sandbox should stop, the
//! step **succeeds** with the output `blocked=<the error the plugin got>`
//! when it was stopped, and **fails** with a message starting `ESCAPED:`
//! when it got through — so a test tells "blocked" from "escaped" from
//! "crashed" (a trap, e.g. the deadline or the memory cap).
//!
//! | attack | tries | expected |
//! |---|---|---|
//! | `read-passwd` | `std::fs::read("/etc/passwd")` | blocked |
//! | `escape-dotdot` | reading `/workspace/../../etc/passwd` and `../outside` | blocked |
//! | `symlink-escape` | creating links to `/etc/passwd` and `../../../etc/passwd` in the workspace and reading through them | blocked |
//! | `write-outside` | writing `/tmp/viaduct-hostile` | blocked |
//! | `list-root` | listing `/` | blocked (or only the preopens) |
//! | `copy-escape` | the host's `files.copy` of `/etc/passwd` and `/workspace/../../etc/passwd` into the workspace, of a workspace file to `/tmp/viaduct-hostile-copy` and `../hostile-out`, and of workspace trees holding a link to `/etc/passwd` and one to a workspace file outside the tree | blocked |
//! | `exec-forbidden` | exec of `sh` (not on its list, which is `["true"]`) and of `/usr/bin/true` (not a bare name) | blocked |
//! | `socket` | TCP connect to `127.0.0.1:<port>` and a UDP bind (manifest `network = false`) | blocked |
//! | `env-probe` | whether variables that were not granted are visible | blocked |
//! | `memory-bomb` | allocating 16 MiB at a time up to `limit_mb` (default 1024) | blocked (allocation fails, `allocated_mb` says how far it got) or a trap |
//! | `spin` | an endless loop | killed at the step's deadline |
//! | `panic` | `panic!` | the step fails with the trap; the log has the message |

#![warn(missing_docs)]

use std::{collections::BTreeSet, hint::black_box, io};

use serde::Deserialize;
use viaduct_plugin_sdk::{exec::Command, prelude::*};

/// The `with:` inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// Which attack.
    #[serde(deserialize_with = "de::string")]
    attack: String,
    /// `socket`: the port to connect to on 127.0.0.1.
    #[serde(default = "default_port", deserialize_with = "de::number")]
    port: u16,
    /// `memory-bomb`: allocating this much without failing counts as an
    /// escape from the memory cap.
    #[serde(default = "default_limit", deserialize_with = "de::number")]
    limit_mb: u64,
}

fn default_port() -> u16 {
    7700
}

fn default_limit() -> u64 {
    1024
}

/// The attacks, by name.
pub const ATTACKS: [&str; 12] = [
    "read-passwd",
    "escape-dotdot",
    "symlink-escape",
    "write-outside",
    "list-root",
    "copy-escape",
    "exec-forbidden",
    "socket",
    "env-probe",
    "memory-bomb",
    "spin",
    "panic",
];

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    let attack = w.attack.trim();
    ctx.info(format!("attack: {attack}"));
    let out = Output::new().set("attack", attack);
    let result = match attack {
        "read-passwd" => all_blocked([attempt("/etc/passwd", std::fs::read("/etc/passwd"))]),
        "escape-dotdot" => all_blocked([
            attempt("/workspace/../../etc/passwd", std::fs::read("/workspace/../../etc/passwd")),
            attempt("../outside", std::fs::read("../outside")),
            attempt("../../../../etc/passwd", std::fs::read("../../../../etc/passwd")),
        ]),
        "symlink-escape" => symlink_escape(),
        "write-outside" => all_blocked([attempt("/tmp/viaduct-hostile", std::fs::write("/tmp/viaduct-hostile", "x"))]),
        "list-root" => list_root(),
        "copy-escape" => copy_escape(),
        "exec-forbidden" => all_blocked([
            exec_attempt(Command::new("sh").args(["-c", "id"])),
            exec_attempt(Command::new("/usr/bin/true")),
            exec_attempt(Command::new("../true")),
        ]),
        "socket" => all_blocked([
            attempt(&format!("tcp connect 127.0.0.1:{}", w.port), std::net::TcpStream::connect(("127.0.0.1", w.port))),
            attempt("udp bind 0.0.0.0:0", std::net::UdpSocket::bind("0.0.0.0:0")),
        ]),
        "env-probe" => return env_probe(&ctx, out),
        "memory-bomb" => return memory_bomb(&ctx, out, w.limit_mb),
        "spin" => spin(),
        "panic" => panic!("hostile plugin panicked on purpose"),
        other => bail!("unknown attack `{other}` (expected one of {})", ATTACKS.join(", ")),
    };
    match result {
        Ok(blocked) => {
            ctx.info(format!("blocked: {blocked}"));
            Ok(out.set("blocked", blocked))
        }
        Err(escaped) => Err(out.fail(format!("ESCAPED: {escaped}"))),
    }
}

/// One attempt: `Ok(error text)` when it failed (blocked), `Err(what)`
/// when it worked.
type Attempt = std::result::Result<String, String>;

fn attempt<T>(what: &str, result: io::Result<T>) -> Attempt {
    match result {
        Ok(_) => Err(format!("{what} succeeded")),
        Err(e) => Ok(format!("{what}: {e}")),
    }
}

fn exec_attempt(cmd: Command) -> Attempt {
    match cmd.run() {
        Ok(exit) => Err(format!("ran `{cmd}` (exit code {})", exit.code)),
        Err(e) => Ok(e.message().to_owned()),
    }
}

/// Blocked only if every attempt was: the errors joined with `; `.
fn all_blocked(attempts: impl IntoIterator<Item = Attempt>) -> Attempt {
    let mut blocked = Vec::new();
    for a in attempts {
        blocked.push(a?);
    }
    Ok(blocked.join("; "))
}

fn symlink_escape() -> Attempt {
    let mut results = Vec::new();
    for (link, target) in [("hostile-abs-link", "/etc/passwd"), ("hostile-rel-link", "../../../etc/passwd")] {
        let _ = std::fs::remove_file(link);
        match viaduct_plugin_sdk::fs::symlink(target, link) {
            // Creating the link may be refused already; else reading through it must be.
            Err(e) => results.push(Ok(format!("link {link} -> {target}: {e}"))),
            Ok(()) => results.push(attempt(&format!("read through {link} -> {target}"), std::fs::read(link))),
        }
        let _ = std::fs::remove_file(link);
    }
    all_blocked(results)
}

fn copy_attempt(source: &str, dest: &str) -> Attempt {
    match files::copy(source, dest) {
        Ok(c) => Err(format!("copy {source} -> {dest} succeeded ({} files, {} links)", c.files, c.links)),
        Err(e) => Ok(e.message().to_owned()),
    }
}

/// A tree `dir` with a file and a link `leak -> target`, copied to
/// `<dir>-copy`: the link leads outside the tree, so the copy must be
/// refused (creating the link may be refused already).
fn copy_tree_with_link(dir: &str, target: &str) -> Attempt {
    let _ = std::fs::remove_dir_all(dir);
    let leak = format!("{dir}/leak");
    let attempt = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(format!("{dir}/inside.txt"), "inside"))
        .map_err(|e| format!("cannot set up {dir}: {e}"))
        .and_then(|()| match viaduct_plugin_sdk::fs::symlink(target, &leak) {
            Err(e) => Ok(format!("link {leak} -> {target}: {e}")),
            Ok(()) => copy_attempt(dir, &format!("{dir}-copy")),
        });
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(format!("{dir}-copy"));
    attempt
}

fn copy_escape() -> Attempt {
    let _ = std::fs::write("hostile-src.txt", "x");
    let result = all_blocked([
        copy_attempt("/etc/passwd", "hostile-passwd"),
        copy_attempt("/workspace/../../etc/passwd", "hostile-passwd"),
        copy_attempt("hostile-src.txt", "/tmp/viaduct-hostile-copy"),
        copy_attempt("hostile-src.txt", "../hostile-out"),
        copy_tree_with_link("hostile-tree-abs", "/etc/passwd"),
        copy_tree_with_link("hostile-tree-up", "../hostile-src.txt"),
    ]);
    let _ = std::fs::remove_file("hostile-src.txt");
    let _ = std::fs::remove_file("hostile-passwd");
    result
}

fn list_root() -> Attempt {
    match std::fs::read_dir("/") {
        Err(e) => Ok(format!("list /: {e}")),
        Ok(entries) => {
            let names: BTreeSet<String> =
                entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            // Listing the preopens themselves reveals nothing of the host.
            let host: Vec<&String> = names.iter().filter(|n| !matches!(n.as_str(), "workspace" | "deploy")).collect();
            if host.is_empty() {
                Ok(format!("list / shows only the preopens: {names:?}"))
            } else {
                Err(format!("list / shows {host:?}"))
            }
        }
    }
}

fn env_probe(ctx: &Context, out: Output) -> Result<Output> {
    let visible: BTreeSet<String> = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    let granted: BTreeSet<&String> = ctx.env_vars().keys().collect();
    let leaked: Vec<&String> = visible.iter().filter(|k| !granted.contains(k)).collect();
    let out = out
        .set("visible", visible.iter().cloned().collect::<Vec<_>>().join(","))
        .set("home_visible", visible.contains("HOME"))
        .set("path_visible", visible.contains("PATH"));
    if leaked.is_empty() {
        let blocked = format!("only the {} granted variables are visible", visible.len());
        ctx.info(format!("blocked: {blocked}"));
        Ok(out.set("blocked", blocked))
    } else {
        let names: Vec<&str> = leaked.iter().map(|s| s.as_str()).collect();
        Err(out.fail(format!("ESCAPED: visible but not granted: {}", names.join(", "))))
    }
}

fn memory_bomb(ctx: &Context, out: Output, limit_mb: u64) -> Result<Output> {
    const CHUNK_MB: u64 = 16;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut allocated = 0u64;
    let failure = loop {
        if allocated >= limit_mb {
            break None;
        }
        let mut chunk: Vec<u8> = Vec::new();
        match chunk.try_reserve_exact((CHUNK_MB << 20) as usize) {
            Ok(()) => {
                // Touch every page so nothing is left lazily unallocated.
                chunk.resize((CHUNK_MB << 20) as usize, 0xA5);
                held.push(black_box(chunk));
                allocated += CHUNK_MB;
            }
            Err(e) => break Some(e),
        }
    };
    let out = out.set("allocated_mb", allocated);
    drop(black_box(held));
    match failure {
        Some(e) => {
            let blocked = format!("allocation failed after {allocated} MiB: {e}");
            ctx.info(format!("blocked: {blocked}"));
            Ok(out.set("blocked", blocked))
        }
        None => Err(out.fail(format!("ESCAPED: allocated {allocated} MiB without hitting the memory cap"))),
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_outcomes() {
        assert_eq!(attempt::<()>("x", Err(io::Error::other("no"))), Ok("x: no".to_owned()));
        assert_eq!(attempt("x", Ok(1)), Err("x succeeded".to_owned()));
        assert_eq!(all_blocked([Ok("a".into()), Ok("b".into())]), Ok("a; b".to_owned()));
        assert_eq!(all_blocked([Ok("a".into()), Err("b".into())]), Err("b".to_owned()));
    }

    #[test]
    fn natively_exec_is_blocked() {
        let out = run(Context::builder().with("attack", "exec-forbidden").build()).unwrap();
        assert!(out.get("blocked").unwrap().contains("only available"), "{out:?}");
    }

    #[test]
    fn memory_bomb_stops_at_the_limit() {
        let ctx = Context::builder().build();
        let e = memory_bomb(&ctx, Output::new(), 32).unwrap_err();
        assert!(e.message().starts_with("ESCAPED: allocated 32 MiB"), "{e}");
        assert_eq!(e.outputs()[0], ("allocated_mb".to_owned(), "32".to_owned()));
    }

    #[test]
    fn natively_copy_is_blocked() {
        // Not the whole attack: natively it would write into the crate directory.
        let blocked = copy_attempt("/etc/passwd", "hostile-passwd").unwrap();
        assert!(blocked.contains("`files.copy` is only available"), "{blocked}");
    }

    #[test]
    fn unknown_attack() {
        let e = run(Context::builder().with("attack", "nope").build()).unwrap_err();
        assert!(e.message().starts_with("unknown attack `nope`"), "{e}");
    }
}
