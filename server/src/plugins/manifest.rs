//! `plugin.toml`: a plugin's name, version, ABI and capabilities.
//!
//! ```toml
//! name = "cache"
//! version = "1.0.0"
//! abi = "1.0"
//! description = "Restore and save build caches"
//! post = true                 # wants a post phase
//! post_if = "success()"       # its condition (default)
//!
//! [capabilities]
//! network = false
//! exec = ["nix"]
//! mounts = ["deploy"]
//! memory_mb = 256
//!
//! [inputs.key]
//! description = "Cache key prefix"
//! required = false
//! default = "cargo"
//!
//! [outputs.hit]
//! description = "true when the exact key was restored"
//! ```
//!
//! Every problem is reported as a diagnostic with the file, line and column.

use std::{collections::BTreeMap, ops::Range};

use serde::Deserialize;
use toml::Spanned;
use viaduct_proto::v1::{Diagnostic, PluginCapabilities, PluginManifest, PluginParam};

/// The plugin ABI major version this server speaks.
pub const ABI_MAJOR: u64 = 1;
/// The newest 1.x minor version this server (and its runners) implement:
/// 1.1 added the `exec-all` interface (several host commands at once).
pub const ABI_MINOR: u64 = 1;

/// Largest memory cap a manifest may ask for, in MiB.
pub const MAX_MEMORY_MB: u32 = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    version: Spanned<String>,
    abi: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    post: bool,
    #[serde(default)]
    post_if: Option<Spanned<String>>,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    inputs: BTreeMap<Spanned<String>, Param>,
    #[serde(default)]
    outputs: BTreeMap<Spanned<String>, Param>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Capabilities {
    #[serde(default)]
    network: bool,
    #[serde(default)]
    exec: Vec<Spanned<String>>,
    #[serde(default)]
    mounts: Vec<Spanned<String>>,
    #[serde(default)]
    memory_mb: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Param {
    #[serde(default)]
    description: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<toml::Value>,
}

/// Line and column (1-based, in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
}

struct Diags<'a> {
    file: &'a str,
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl Diags<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = position(self.text, span.start);
        self.out.push(Diagnostic { file: self.file.to_string(), line, column, message: message.into() });
    }
}

/// Whether `s` is a plugin name: `[a-z0-9][a-z0-9-]{0,63}`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `s` may name a host program or a mount: a bare file name.
fn bare_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        && !s.starts_with('.')
}

/// Parses and checks a manifest; `file` names it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<PluginManifest, Vec<Diagnostic>> {
    let mut d = Diags { file, text, out: Vec::new() };
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            d.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(d.out);
        }
    };
    if !valid_name(raw.name.get_ref()) {
        d.at(
            raw.name.span(),
            format!("`{}` is not a plugin name (expected [a-z0-9][a-z0-9-]*, at most 64)", raw.name.get_ref()),
        );
    }
    if let Err(e) = semver::Version::parse(raw.version.get_ref()) {
        d.at(raw.version.span(), format!("`{}` is not a semantic version such as 1.2.3: {e}", raw.version.get_ref()));
    }
    check_abi(&mut d, &raw.abi);
    let post_if = raw.post_if.as_ref().map(|c| c.get_ref().trim().to_string()).unwrap_or_default();
    if let Some(c) = &raw.post_if {
        if !raw.post {
            d.at(c.span(), "`post_if` needs `post = true`");
        } else if let Err(e) = viaduct_pipeline::expr::parse_condition(c.get_ref()) {
            d.at(c.span(), format!("`post_if` is not a valid condition: {}", e.message));
        }
    }
    let caps = &raw.capabilities;
    for (list, what) in [(&caps.exec, "an exec program"), (&caps.mounts, "a mount")] {
        for n in list {
            if !bare_name(n.get_ref()) {
                d.at(n.span(), format!("`{}` is not {what} name (a bare name such as `nix`, no `/`)", n.get_ref()));
            }
        }
    }
    if let Some(m) = &caps.memory_mb
        && !(1..=MAX_MEMORY_MB).contains(m.get_ref())
    {
        d.at(m.span(), format!("memory_mb must be between 1 and {MAX_MEMORY_MB}"));
    }
    let inputs = params(&mut d, &raw.inputs, "input");
    let outputs = params(&mut d, &raw.outputs, "output");
    if !d.out.is_empty() {
        return Err(d.out);
    }
    Ok(PluginManifest {
        name: raw.name.into_inner(),
        version: raw.version.into_inner(),
        abi: raw.abi.into_inner(),
        description: raw.description,
        post: raw.post,
        post_if,
        capabilities: Some(PluginCapabilities {
            network: caps.network,
            exec: caps.exec.iter().map(|s| s.get_ref().clone()).collect(),
            mounts: caps.mounts.iter().map(|s| s.get_ref().clone()).collect(),
            memory_mb: caps.memory_mb.as_ref().map_or(0, |m| *m.get_ref()),
        }),
        inputs,
        outputs,
    })
}

fn check_abi(d: &mut Diags<'_>, abi: &Spanned<String>) {
    let parsed =
        abi.get_ref().split_once('.').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match parsed {
        None => d.at(abi.span(), format!("`{}` is not an ABI version such as \"1.0\"", abi.get_ref())),
        Some((major, _)) if major != ABI_MAJOR => d.at(
            abi.span(),
            format!("ABI {} is not supported: this server runs viaduct:plugin {ABI_MAJOR}.x", abi.get_ref()),
        ),
        Some((_, minor)) if minor > ABI_MINOR => d.at(
            abi.span(),
            format!("ABI {} is newer than this server's viaduct:plugin {ABI_MAJOR}.{ABI_MINOR}", abi.get_ref()),
        ),
        Some(_) => {}
    }
}

fn params(
    d: &mut Diags<'_>,
    raw: &BTreeMap<Spanned<String>, Param>,
    what: &str,
) -> std::collections::HashMap<String, PluginParam> {
    raw.iter()
        .map(|(name, p)| {
            let ok = !name.get_ref().is_empty()
                && name.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                d.at(
                    name.span(),
                    format!("`{}` is not a valid {what} name (letters, digits, `_`, `-`)", name.get_ref()),
                );
            }
            let default_json = p.default.as_ref().and_then(|v| serde_json::to_string(v).ok()).unwrap_or_default();
            (
                name.get_ref().clone(),
                PluginParam { description: p.description.clone(), required: p.required, default_json },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "cache"
version = "1.2.0"
abi = "1.0"
description = "Caches"
post = true

[capabilities]
exec = ["nix"]
memory_mb = 128

[inputs.key]
description = "Key prefix"
default = "cargo"

[inputs.paths]
required = true
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = parse("plugin.toml", GOOD).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str(), m.post), ("cache", "1.2.0", true));
        let caps = m.capabilities.unwrap();
        assert_eq!((caps.exec, caps.memory_mb, caps.network), (vec!["nix".to_string()], 128, false));
        assert_eq!(m.inputs["key"].default_json, "\"cargo\"");
        assert!(m.inputs["paths"].required);
    }

    #[test]
    fn errors_name_line_and_column() {
        let bad = GOOD.replace("version = \"1.2.0\"", "version = \"one\"");
        let d = parse("p.toml", &bad).unwrap_err();
        assert_eq!((d[0].line, d[0].column), (3, 11), "{d:?}");
        assert!(d[0].message.contains("semantic version"), "{d:?}");

        let d = parse("p.toml", "name = \"x\"\nversion = \"1.0.0\"\nabi = \"1.0\"\nnetwork = true\n").unwrap_err();
        assert_eq!(d[0].line, 4, "{d:?}");
        assert!(d[0].message.contains("unknown field `network`"), "{d:?}");

        let d = parse("p.toml", "name = \"x\"\nversion = \"1.0.0\"\n").unwrap_err();
        assert!(d[0].message.contains("missing field `abi`"), "{d:?}");
    }

    #[test]
    fn accepts_every_implemented_minor() {
        for abi in ["1.0", "1.1"] {
            let m = parse("p.toml", &GOOD.replace("abi = \"1.0\"", &format!("abi = \"{abi}\""))).unwrap();
            assert_eq!(m.abi, abi);
        }
        let d = parse("p.toml", &GOOD.replace("abi = \"1.0\"", "abi = \"1.2\"")).unwrap_err();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.contains("ABI 1.2 is newer than this server's viaduct:plugin 1.1"), "{d:?}");
        let d = parse("p.toml", &GOOD.replace("abi = \"1.0\"", "abi = \"2.0\"")).unwrap_err();
        assert!(d[0].message.contains("this server runs viaduct:plugin 1.x"), "{d:?}");
    }

    #[test]
    fn refuses_newer_abis_and_path_like_programs() {
        let bad = GOOD.replace("abi = \"1.0\"", "abi = \"1.7\"").replace("[\"nix\"]", "[\"/bin/sh\"]");
        let d = parse("p.toml", &bad).unwrap_err();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].message.contains("newer than this server"), "{d:?}");
        assert!(d[1].message.contains("bare name"), "{d:?}");
    }
}
