//! The host imports, in one place.
//!
//! On `wasm32` these call the runner. Compiled natively (unit tests of a
//! plugin's logic), log lines go to stderr and every other import fails
//! with an error saying it needs a runner, instead of the `unreachable!()`
//! the generated bindings would hit.

use crate::bindings::viaduct::plugin::{artifacts, cache, exec, exec_all, files, log};

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;

    pub fn log_write(level: log::Level, message: &str) {
        log::write(level, message);
    }

    pub fn cache_restore(key: &str, prefixes: &[String]) -> Result<Option<cache::Hit>, String> {
        cache::restore(key, prefixes)
    }

    pub fn cache_save(key: &str, paths: &[String]) -> Result<cache::Saved, String> {
        cache::save(key, paths)
    }

    pub fn cache_get(key: &str) -> Result<Option<Vec<u8>>, String> {
        cache::get(key)
    }

    pub fn cache_put(key: &str, data: &[u8]) -> Result<(), String> {
        cache::put(key, data)
    }

    pub fn artifacts_upload(path: &str, name: Option<&str>) -> Result<Vec<artifacts::Uploaded>, String> {
        artifacts::upload(path, name)
    }

    pub fn files_copy(source: &str, dest: &str) -> Result<files::Copied, String> {
        files::copy(source, dest)
    }

    pub fn exec_run(cmd: &exec::Command) -> Result<exec::Exit, String> {
        exec::run(cmd)
    }

    pub fn exec_run_all(cmds: &[exec_all::LabelledCommand]) -> Vec<Result<exec::Exit, String>> {
        exec_all::run_all(cmds)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;

    fn unavailable(import: &str) -> String {
        format!("the host import `{import}` is only available when the plugin runs on a Viaduct runner")
    }

    pub fn log_write(level: log::Level, message: &str) {
        let tag = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        for line in message.lines() {
            eprintln!("[{tag}] {line}");
        }
    }

    pub fn cache_restore(_key: &str, _prefixes: &[String]) -> Result<Option<cache::Hit>, String> {
        Err(unavailable("cache.restore"))
    }

    pub fn cache_save(_key: &str, _paths: &[String]) -> Result<cache::Saved, String> {
        Err(unavailable("cache.save"))
    }

    pub fn cache_get(_key: &str) -> Result<Option<Vec<u8>>, String> {
        Err(unavailable("cache.get"))
    }

    pub fn cache_put(_key: &str, _data: &[u8]) -> Result<(), String> {
        Err(unavailable("cache.put"))
    }

    pub fn artifacts_upload(_path: &str, _name: Option<&str>) -> Result<Vec<artifacts::Uploaded>, String> {
        Err(unavailable("artifacts.upload"))
    }

    pub fn files_copy(_source: &str, _dest: &str) -> Result<files::Copied, String> {
        Err(unavailable("files.copy"))
    }

    pub fn exec_run(_cmd: &exec::Command) -> Result<exec::Exit, String> {
        Err(unavailable("exec.run"))
    }

    pub fn exec_run_all(cmds: &[exec_all::LabelledCommand]) -> Vec<Result<exec::Exit, String>> {
        cmds.iter().map(|_| Err(unavailable("exec-all.run-all"))).collect()
    }
}

pub(crate) use imp::*;
