//! Checks that a published `.wasm` is a component a runner can run: valid,
//! exporting `run`, and importing only WASI and the `viaduct:plugin` 1.x
//! interfaces this server implements — so a plugin built for a newer ABI is
//! refused when it is published, not when a job first uses it.

use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Parser, Payload, Validator, WasmFeatures};

use super::manifest::{ABI_MAJOR, ABI_MINOR};

/// The `viaduct:plugin` interfaces of ABI 1.0.
const INTERFACES: &[&str] = &["types", "log", "cache", "artifacts", "files", "exec"];

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
    if !INTERFACES.contains(&interface) {
        return Err(Invalid(format!("imports unknown interface `{name}`")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
        assert!(check_import("viaduct:plugin/log@1.0.0").is_ok());
        assert!(check_import("viaduct:plugin/log@1.3.0").unwrap_err().0.contains("implements viaduct:plugin 1.0"));
        assert!(check_import("viaduct:plugin/gpu@1.0.0").unwrap_err().0.contains("unknown interface"));
        assert!(check_import("evil:host/shell").unwrap_err().0.contains("does not provide"));
    }
}
