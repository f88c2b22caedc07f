//! The web UI bundle and the first-party plugins, embedded in the binaries
//! at build time, so a release `viaduct-server` serves everything alone and
//! `viaduct-runner exec` has the plugins without a server.
//!
//! `build.rs` embeds the directories named by `VIADUCT_EMBED_UI` (what
//! `cargo xtask ui` writes to `target/ui`) and `VIADUCT_EMBED_PLUGINS` (what
//! `cargo xtask plugins` writes to `target/plugins`); `cargo xtask dist`,
//! `test` and `up` set both. Unset, the tables are empty: a plain
//! `cargo build` needs no UI or plugins built. Nothing here checks the
//! files: their users do, as they would files from a directory.

/// One embedded file: its path relative to the embedded directory ("index.html", "assets/x.wasm.br", "cache.toml").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    /// Relative path, `/`-separated.
    pub path: &'static str,
    /// Its contents.
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));

/// The web UI bundle embedded at build time (empty when the build had none).
pub fn ui() -> &'static [File] {
    UI
}

/// The first-party plugins embedded at build time: `<name>.toml` and `<name>.wasm` files (empty when none).
pub fn plugins() -> &'static [File] {
    PLUGINS
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_are_sorted_and_plugins_are_manifests_and_components() {
        for table in [super::ui(), super::plugins()] {
            assert!(table.windows(2).all(|w| w[0].path < w[1].path), "unsorted");
        }
        assert!(super::plugins().iter().all(|f| f.path.ends_with(".toml") || f.path.ends_with(".wasm")));
        assert!(super::plugins().iter().all(|f| !f.path.contains('/')));
    }
}
