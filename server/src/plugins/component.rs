//! Checks that a published `.wasm` is a component a runner can run: valid,
//! exporting `run`, and importing only WASI and the `viaduct:plugin` 1.x
//! interfaces this server implements — so a plugin built for a newer ABI is
//! refused when it is published, not when a job first uses it — and only
//! interfaces its manifest allows ([`check_manifest`]: its capabilities and
//! its `abi`).
//!
//! Components import interfaces by semver (`viaduct:plugin/log@1.0.0`); one
//! built against any 1.x up to [`ABI_MINOR`] is accepted, as runners link
//! them all to their own 1.x interfaces (which only ever add).

use viaduct_proto::v1::PluginManifest;
use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Parser, Payload, Validator, WasmFeatures};

use super::manifest::{ABI_MAJOR, ABI_MINOR};

/// The `viaduct:plugin` interfaces, with the 1.x minor version that added
/// each: 1.0's, then 1.1's `exec-all`.
const INTERFACES: &[(&str, u64)] =
    &[("types", 0), ("log", 0), ("cache", 0), ("artifacts", 0), ("files", 0), ("exec", 0), ("exec-all", 1)];

/// Interfaces that run host programs, so need the `exec` capability (a
/// non-empty allow-list): `exec`, and `exec-all`, which runs several at once.
const NEEDS_EXEC: &[&str] = &["exec", "exec-all"];

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks `bytes`; returns the top-level import names on success.
pub fn check(bytes: &[u8]) -> Result<Vec<String>, Invalid> {
    if !Parser::is_component(bytes) {
        let hint = if Parser::is_core_wasm(bytes) {
            " (it is a core module: build for wasm32-wasip2, which emits a component)"
        } else {
            ""
        };
        return Err(Invalid(format!("not a WebAssembly component{hint}")));
    }
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    validator.validate_all(bytes).map_err(|e| Invalid(format!("invalid component: {e}")))?;

    let mut imports = Vec::new();
    let mut exports_run = false;
    // Nesting depth: 1 = the outer component (nested modules and
    // components have their own imports and exports).
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Invalid(format!("invalid component: {e}")))?;
        match payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding != Encoding::Component {
                    return Err(Invalid("not a WebAssembly component".into()));
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(|e| Invalid(format!("invalid import: {e}")))?;
                    // Types the world `use`s are imported by name too;
                    // only functions and instances need the host.
                    if !matches!(import.ty, ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name.to_string());
                    }
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| Invalid(format!("invalid export: {e}")))?;
                    if export.name.name == "run" && export.kind == ComponentExternalKind::Func {
                        exports_run = true;
                    }
                }
            }
            _ => {}
        }
    }
    if !exports_run {
        return Err(Invalid(
            "the component does not export `run` (does it target the viaduct:plugin `step` world?)".into(),
        ));
    }
    for name in &imports {
        check_import(name)?;
    }
    Ok(imports)
}

fn check_import(name: &str) -> Result<(), Invalid> {
    if name.starts_with("wasi:") {
        return Ok(());
    }
    let Some(rest) = name.strip_prefix("viaduct:plugin/") else {
        return Err(Invalid(format!("imports `{name}`, which the runner does not provide")));
    };
    let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
    let version =
        semver::Version::parse(version).map_err(|_| Invalid(format!("imports `{name}` without a valid version")))?;
    if version.major != ABI_MAJOR || version.minor > ABI_MINOR {
        return Err(Invalid(format!(
            "imports `{name}`: this server implements viaduct:plugin {ABI_MAJOR}.{ABI_MINOR}"
        )));
    }
    match INTERFACES.iter().find(|(i, _)| *i == interface) {
        None => Err(Invalid(format!("imports unknown interface `{name}`"))),
        Some((_, since)) if version.minor < *since => Err(Invalid(format!(
            "imports `{name}`, but `{interface}` exists only since viaduct:plugin {ABI_MAJOR}.{since}"
        ))),
        Some(_) => Ok(()),
    }
}

/// The `viaduct:plugin` interface an import names (`exec-all` for
/// `viaduct:plugin/exec-all@1.1.0`), if it names one.
fn interface_of(import: &str) -> Option<&str> {
    let rest = import.strip_prefix("viaduct:plugin/")?;
    Some(rest.split_once('@').map_or(rest, |(i, _)| i))
}

/// Checks the imports [`check`] returned against the manifest:
/// - a component that imports `exec` or `exec-all` needs a non-empty `exec`
///   allow-list (without one, every call would be refused at run time; a
///   plugin that runs nothing should not import them);
/// - its `abi` must be at least the version that added each interface it
///   imports (`abi = "1.1"` for `exec-all`): the manifest says which hosts
///   it needs. (Its imports may carry a newer version than its `abi`: a
///   plugin built with a newer SDK that uses only 1.0's interfaces still
///   says `"1.0"`.)
pub fn check_manifest(imports: &[String], manifest: &PluginManifest) -> Result<(), Invalid> {
    let exec_granted = manifest.capabilities.as_ref().is_some_and(|c| !c.exec.is_empty());
    let abi_minor = manifest.abi.split_once('.').and_then(|(_, minor)| minor.parse::<u64>().ok()).unwrap_or(0);
    for import in imports {
        let Some(interface) = interface_of(import) else { continue };
        if NEEDS_EXEC.contains(&interface) && !exec_granted {
            return Err(Invalid(format!(
                "imports `{import}` but its manifest grants no `exec` capability (list the programs it runs under \
                 `[capabilities] exec = [...]`, or do not use `{interface}`)"
            )));
        }
        if let Some((_, since)) = INTERFACES.iter().find(|(i, _)| *i == interface)
            && *since > abi_minor
        {
            return Err(Invalid(format!(
                "imports `{import}`, which needs viaduct:plugin {ABI_MAJOR}.{since}, but its manifest says \
                 `abi = \"{}\"` (set it to \"{ABI_MAJOR}.{since}\")",
                manifest.abi
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::PluginCapabilities;

    use super::*;

    #[test]
    fn refuses_core_modules_and_garbage() {
        let core = b"\0asm\x01\0\0\0";
        assert!(check(core).unwrap_err().0.contains("core module"));
        assert!(check(b"not wasm").unwrap_err().0.contains("not a WebAssembly component"));
    }

    #[test]
    fn import_rules() {
        assert!(check_import("wasi:filesystem/types@0.2.6").is_ok());
        // Components built against 1.0 and 1.1 alike.
        for v in ["1.0.0", "1.1.0", "1.1.3"] {
            for i in ["types", "log", "cache", "artifacts", "files", "exec"] {
                assert!(check_import(&format!("viaduct:plugin/{i}@{v}")).is_ok(), "{i}@{v}");
            }
        }
        assert!(check_import("viaduct:plugin/exec-all@1.1.0").is_ok());
        let e = check_import("viaduct:plugin/exec-all@1.0.0").unwrap_err().0;
        assert!(e.contains("exists only since viaduct:plugin 1.1"), "{e}");
        assert!(check_import("viaduct:plugin/log@1.2.0").unwrap_err().0.contains("implements viaduct:plugin 1.1"));
        assert!(check_import("viaduct:plugin/log@2.0.0").unwrap_err().0.contains("implements viaduct:plugin 1.1"));
        assert!(check_import("viaduct:plugin/log").unwrap_err().0.contains("without a valid version"));
        assert!(check_import("viaduct:plugin/gpu@1.0.0").unwrap_err().0.contains("unknown interface"));
        assert!(check_import("evil:host/shell").unwrap_err().0.contains("does not provide"));
    }

    fn manifest(abi: &str, caps: Option<PluginCapabilities>) -> PluginManifest {
        PluginManifest { abi: abi.into(), capabilities: caps, ..Default::default() }
    }

    #[test]
    fn exec_and_exec_all_need_the_exec_capability() {
        let imports = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let with_exec = PluginCapabilities { exec: vec!["ssh".into()], ..Default::default() };
        let without = PluginCapabilities { network: true, mounts: vec!["deploy".into()], ..Default::default() };
        let plain = imports(&["wasi:cli/stdout@0.2.6", "viaduct:plugin/log@1.1.0", "viaduct:plugin/files@1.0.0"]);
        assert!(check_manifest(&plain, &manifest("1.0", None)).is_ok());
        assert!(check_manifest(&plain, &manifest("1.0", Some(without.clone()))).is_ok());
        for import in ["viaduct:plugin/exec@1.0.0", "viaduct:plugin/exec@1.1.0", "viaduct:plugin/exec-all@1.1.0"] {
            let list = imports(&["viaduct:plugin/log@1.1.0", import]);
            assert!(check_manifest(&list, &manifest("1.1", Some(with_exec.clone()))).is_ok(), "{import}");
            for caps in [None, Some(without.clone())] {
                let e = check_manifest(&list, &manifest("1.1", caps)).unwrap_err().0;
                assert!(e.contains(&format!("imports `{import}` but its manifest grants no `exec` capability")), "{e}");
            }
        }
    }

    #[test]
    fn exec_all_needs_abi_1_1_in_the_manifest() {
        let list = vec!["viaduct:plugin/exec-all@1.1.0".to_string(), "viaduct:plugin/exec@1.1.0".to_string()];
        let caps = Some(PluginCapabilities { exec: vec!["ssh".into()], ..Default::default() });
        let e = check_manifest(&list, &manifest("1.0", caps.clone())).unwrap_err().0;
        assert!(e.contains("needs viaduct:plugin 1.1, but its manifest says `abi = \"1.0\"`"), "{e}");
        assert!(check_manifest(&list, &manifest("1.1", caps.clone())).is_ok());
        // 1.0's interfaces at a newer version (a newer SDK) are fine with `abi = "1.0"`.
        assert!(check_manifest(&list[1..], &manifest("1.0", caps)).is_ok());
    }
}
