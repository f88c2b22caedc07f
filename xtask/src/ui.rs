//! `cargo xtask ui`: builds the web UI bundle into `target/ui/`.
//!
//! Plain cargo + wasm-bindgen (no trunk: it downloads tools at build time):
//! 1. `cargo build -p viaduct-ui --target wasm32-unknown-unknown --profile ui`;
//! 2. `wasm-bindgen --target web` → an ES module and its `.wasm`;
//! 3. `wasm-opt -Oz` (npm binaryen) when available;
//! 4. content-hashed names under `assets/` (served as immutable), gzip and
//!    brotli copies beside each (served to browsers that accept them), and
//!    `index.html` from the `ui/index.html` template.
//!
//! The server serves the result with `--ui-dir target/ui`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cargo, root, run, target_dir};

/// The UI's rustc target.
pub const TARGET: &str = "wasm32-unknown-unknown";
/// The cargo profile the UI is built with (small code: see Cargo.toml).
const PROFILE: &str = "ui";

/// Where the bundle is written.
pub fn output_dir() -> PathBuf {
    target_dir().join("ui")
}

/// One file of the bundle and its sizes.
struct Asset {
    name: String,
    raw: usize,
    gzip: usize,
    brotli: usize,
}

/// Builds the bundle; returns its directory.
pub fn build() -> Result<PathBuf> {
    crate::setup::wasm_target(TARGET)?;
    let bindgen = crate::setup::wasm_bindgen()?;
    run(cargo().args(["build", "-p", "viaduct-ui", "--target", TARGET, "--profile", PROFILE]))?;
    let wasm = target_dir().join(TARGET).join(PROFILE).join("viaduct_ui.wasm");

    let staging = target_dir().join("ui-staging");
    let _ = std::fs::remove_dir_all(&staging);
    run(Command::new(&bindgen)
        .args(["--target", "web", "--no-typescript", "--out-name", "viaduct_ui", "--out-dir"])
        .arg(&staging)
        .arg(&wasm))
    .context("wasm-bindgen")?;
    let bound = staging.join("viaduct_ui_bg.wasm");
    if let Some(opt) = crate::setup::wasm_opt() {
        let optimised = staging.join("viaduct_ui_opt.wasm");
        // The features rustc enables by default for this target.
        run(Command::new(opt)
            .args([
                "-Oz",
                "--enable-bulk-memory",
                "--enable-nontrapping-float-to-int",
                "--enable-sign-ext",
                "--enable-mutable-globals",
                "--enable-reference-types",
                "--enable-multivalue",
            ])
            .arg(&bound)
            .arg("-o")
            .arg(&optimised))
        .context("wasm-opt")?;
        std::fs::rename(&optimised, &bound)?;
    }

    let out = output_dir();
    let _ = std::fs::remove_dir_all(&out);
    let assets_dir = out.join("assets");
    std::fs::create_dir_all(&assets_dir)?;
    let ui_src = root().join("ui");
    let js = hashed(&staging.join("viaduct_ui.js"), "viaduct_ui", "js", &assets_dir)?;
    let wasm = hashed(&bound, "viaduct_ui", "wasm", &assets_dir)?;
    let css = hashed(&ui_src.join("style.css"), "style", "css", &assets_dir)?;
    let template = std::fs::read_to_string(ui_src.join("index.html")).context("reading ui/index.html")?;
    let html = template
        .replace("{{JS}}", &format!("/assets/{}", js.name))
        .replace("{{WASM}}", &format!("/assets/{}", wasm.name))
        .replace("{{CSS}}", &format!("/assets/{}", css.name));
    std::fs::write(out.join("index.html"), html)?;
    let _ = std::fs::remove_dir_all(&staging);

    let kib = |n: usize| format!("{:.1} KiB", n as f64 / 1024.0);
    let total = |f: fn(&Asset) -> usize| [&js, &wasm, &css].iter().map(|a| f(a)).sum::<usize>();
    for a in [&wasm, &js, &css] {
        eprintln!(
            "xtask: ui  {:<40} {:>10} raw {:>10} gzip {:>10} brotli",
            a.name,
            kib(a.raw),
            kib(a.gzip),
            kib(a.brotli)
        );
    }
    eprintln!(
        "xtask: ui  bundle {} raw, {} gzip, {} brotli → {}",
        kib(total(|a| a.raw)),
        kib(total(|a| a.gzip)),
        kib(total(|a| a.brotli)),
        out.display()
    );
    Ok(out)
}

/// Copies `src` into `dir` as `<stem>-<16 hex of its blake3>.<ext>`, with
/// `.gz` and `.br` copies.
fn hashed(src: &Path, stem: &str, ext: &str, dir: &Path) -> Result<Asset> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let hash = blake3::hash(&bytes).to_hex();
    let name = format!("{stem}-{}.{ext}", &hash[..16]);
    std::fs::write(dir.join(&name), &bytes)?;

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bytes)?;
    let gz = gz.finish()?;
    std::fs::write(dir.join(format!("{name}.gz")), &gz)?;

    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 64 * 1024, 11, 22);
        w.write_all(&bytes)?;
    }
    std::fs::write(dir.join(format!("{name}.br")), &br)?;
    Ok(Asset { name, raw: bytes.len(), gzip: gz.len(), brotli: br.len() })
}
