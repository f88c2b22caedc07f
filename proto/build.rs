//! Generates the `viaduct.v1` messages, clients and (with the `transport`
//! feature) servers, plus an encoded file descriptor set for gRPC reflection.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so building needs no
//! system package.

use std::{env, io, path::PathBuf};

const PROTOS: &[&str] = &[
    "viaduct/v1/common.proto",
    "viaduct/v1/runs.proto",
    "viaduct/v1/logs.proto",
    "viaduct/v1/pipelines.proto",
    "viaduct/v1/runners.proto",
    "viaduct/v1/agent.proto",
    "viaduct/v1/repos.proto",
    "viaduct/v1/secrets.proto",
    "viaduct/v1/plugins.proto",
    "viaduct/v1/artifacts.proto",
    "viaduct/v1/caches.proto",
    "viaduct/v1/access.proto",
    "viaduct/v1/admin.proto",
    "viaduct/v1/stats.proto",
    "viaduct/v1/debug.proto",
    "viaduct/v1/environments.proto",
];

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let include = protoc_bin_vendored::include_path().map_err(io::Error::other)?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };

    let transport = env::var_os("CARGO_FEATURE_TRANSPORT").is_some();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    tonic_prost_build::configure()
        .build_server(transport)
        // No generated `connect()` constructors: `RunnerAgent.Connect` would
        // clash with them, and clients are built with `new(channel)` anyway.
        .build_transport(false)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("viaduct_descriptor.bin"))
        .compile_protos(PROTOS, &[".", include.to_str().unwrap_or(".")])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
