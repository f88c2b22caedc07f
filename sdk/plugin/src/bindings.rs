//! Bindings generated from `plugins/wit` (the `viaduct:plugin@1.1.0` `step`
//! world). Plugins normally use the safe wrappers of this crate instead; the
//! raw bindings are public for the [`export!`](crate::export) macro and for
//! plugins that need a type as the host defines it.
#![allow(missing_docs, clippy::all, clippy::pedantic, unsafe_op_in_unsafe_fn)]

wit_bindgen::generate!({
    path: "../../plugins/wit",
    world: "step",
    pub_export_macro: true,
    export_macro_name: "__export_step",
    default_bindings_module: "::viaduct_plugin_sdk::bindings",
});
