//! `viaduct exec`: runs a pipeline on this machine, without a server.
//!
//! The work is the runner's (`viaduct-runner exec`: the same job runner and
//! executors a connected runner uses); the CLI never links the runner, it
//! replaces itself with `viaduct-runner exec` and the same arguments. The
//! runner is the one next to this executable, else the one on `PATH`. Its
//! exit status is this command's: 0 success, 1 the run failed, 2 invalid
//! input.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
};

use super::Failure;

/// The runner's executable name.
const RUNNER: &str = "viaduct-runner";

/// Where `viaduct-runner` is: beside `exe`'s directory, else on `path`
/// (its absolute entries only: never one from the current directory).
pub fn find_runner(exe: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let beside = exe.and_then(Path::parent).map(|d| d.join(RUNNER)).filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(path?).filter(|d| d.is_absolute()).map(|d| d.join(RUNNER)).find(|p| p.is_file())
    })
}

/// Replaces this process with `viaduct-runner exec ARGS…`; returns only
/// when that cannot be done.
pub fn exec(args: &[OsString]) -> Result<(), Failure> {
    let exe = std::env::current_exe().ok();
    let runner = find_runner(exe.as_deref(), std::env::var_os("PATH").as_deref()).ok_or_else(|| {
        Failure::Usage(format!(
            "`viaduct exec` needs {RUNNER} (it runs the jobs), found neither next to this executable nor on PATH: \
             install it (cargo build --bins builds both) and run again"
        ))
    })?;
    let e = std::process::Command::new(&runner).arg("exec").args(args).exec();
    Err(Failure::Usage(format!("cannot run {}: {e}", runner.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_beside_the_cli_comes_before_the_one_on_path() {
        let dir = std::env::temp_dir().join(format!("viaduct-find-runner-{}", std::process::id()));
        let (bin, other) = (dir.join("bin"), dir.join("other"));
        for d in [&bin, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let cli = bin.join("viaduct");
        let path = std::env::join_paths([&other]).unwrap();
        assert_eq!(find_runner(Some(&cli), Some(&path)), None);
        std::fs::write(other.join(RUNNER), "").unwrap();
        assert_eq!(find_runner(Some(&cli), Some(&path)), Some(other.join(RUNNER)));
        std::fs::write(bin.join(RUNNER), "").unwrap();
        assert_eq!(find_runner(Some(&cli), Some(&path)), Some(bin.join(RUNNER)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
