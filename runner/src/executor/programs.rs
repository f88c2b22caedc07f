//! Programs a plugin step runs (the plugin ABI's `exec` import), run where
//! the job's own steps run.
//!
//! A plugin is sandboxed; the programs it asks for are not. So they run
//! exactly as the job's steps would: on the host as the job's user in the
//! job's cgroup (a host job), **inside the job's container** (a container
//! job) — never as the runner on the runner machine. And what the pipeline
//! controls cannot change what they load or execute:
//! - the program is a bare name from the plugin manifest's `exec` list;
//! - its environment is fixed (`PATH`, `HOME`, `TMPDIR`, `LANG`, `CI`)
//!   plus what the plugin passes explicitly — minus variables that make a
//!   program load or run other code (`LD_PRELOAD` and all `LD_*`, `DYLD_*`,
//!   `BASH_ENV`, `NODE_OPTIONS`, `NIX_CONFIG`…), which are refused;
//! - arguments that do the same for a known program are refused (for
//!   `nix`: settings that load plugins or run hooks and remote builders).
//!
//! [`check`] applies these rules; a [`Programs`] runs what passed them.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::mpsc;

/// Most captured stdout.
pub const MAX_CAPTURE: usize = 64 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Bare program name.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra env (on top of the fixed base).
    pub env: Vec<(String, String)>,
    /// Workspace-relative working directory.
    pub cwd: Option<String>,
    /// Return stdout instead of logging it.
    pub capture_stdout: bool,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
}

/// Runs programs for a job's plugin steps, where its steps run.
#[async_trait::async_trait]
pub trait Programs: Send + Sync {
    /// Runs `req` (already [`check`]ed) with the fixed [`environment`],
    /// streaming what it writes (stderr, and stdout unless captured) to
    /// `log`. Dropping the future stops it. `Err`: it could not start.
    async fn run(&self, req: &ExecRequest, log: &mpsc::Sender<Vec<u8>>) -> Result<ExecExit, String>;
}

/// For executors that run no programs (the dummy one).
pub struct NoPrograms;

#[async_trait::async_trait]
impl Programs for NoPrograms {
    async fn run(&self, req: &ExecRequest, _log: &mpsc::Sender<Vec<u8>>) -> Result<ExecExit, String> {
        Err(format!("`{}`: this executor runs no programs", req.program))
    }
}

/// A shared [`NoPrograms`].
pub fn none() -> Arc<dyn Programs> {
    Arc::new(NoPrograms)
}

/// Whether variable `name` changes what a program loads or executes.
fn dangerous_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PROMPT_COMMAND",
        "PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "NIX_CONFIG",
        "NIX_USER_CONF_FILES",
        "NIX_CONF_DIR",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "GIT_EXTERNAL_DIFF",
        "GIT_PAGER",
        "PAGER",
        "EDITOR",
        "VISUAL",
        "SSH_ASKPASS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "MALLOC_CHECK_",
        "TMPDIR",
        "HOME",
    ];
    let upper = name.to_ascii_uppercase();
    EXACT.contains(&upper.as_str())
        || upper.starts_with("LD_")
        || upper.starts_with("DYLD_")
        || upper.starts_with("GIT_CONFIG")
        || upper.contains("PRELOAD")
}

/// Settings of `nix` that load code into it or make it run programs.
const NIX_DENIED: &[&str] = &[
    "plugin-files",
    "extra-plugin-files",
    "build-hook",
    "pre-build-hook",
    "post-build-hook",
    "diff-hook",
    "run-diff-hook",
    "builders",
    "extra-builders",
    "builders-use-substitutes",
    "allowed-impure-host-deps",
    "sandbox-paths",
    "extra-sandbox-paths",
    "netrc-file",
    "ssh-auth-sock",
];

/// Why `args` may not be passed to `program`, if they may not.
fn dangerous_argument(program: &str, args: &[String]) -> Option<String> {
    if program != "nix" {
        return None;
    }
    for (i, a) in args.iter().enumerate() {
        let setting = match a.as_str() {
            "--option" | "--extra-option" => args.get(i + 1).map(String::as_str),
            other => other.strip_prefix("--").map(|s| s.split('=').next().unwrap_or(s)),
        };
        if let Some(s) = setting
            .filter(|s| NIX_DENIED.contains(s) || s.strip_prefix("extra-").is_some_and(|b| NIX_DENIED.contains(&b)))
        {
            return Some(format!(
                "`nix` setting `{s}` cannot be passed by a plugin: it makes nix load or run other programs"
            ));
        }
    }
    None
}

/// Checks `req` against the plugin's `allow` list and the rules of the
/// module docs.
pub fn check(req: &ExecRequest, allow: &[String]) -> Result<(), String> {
    let program = req.program.as_str();
    if !allow.iter().any(|a| a == program) {
        let list = if allow.is_empty() { "it has none".to_string() } else { allow.join(", ") };
        return Err(format!("`{program}` is not on this plugin's exec allow-list ({list})"));
    }
    if program.contains('/') || program.is_empty() || program.starts_with('-') {
        return Err(format!("`{program}`: exec takes a program name, not a path"));
    }
    if let Some((name, _)) = req.env.iter().find(|(k, _)| dangerous_variable(k)) {
        return Err(format!(
            "`{name}` cannot be passed to `{program}`: it changes what the program loads or runs (programs get a fixed \
             environment)"
        ));
    }
    if let Some((name, _)) = req.env.iter().find(|(k, _)| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(format!("`{}` is not a variable name", name.escape_debug()));
    }
    if req.args.iter().chain(req.env.iter().map(|(_, v)| v)).any(|a| a.contains('\0')) {
        return Err("arguments and values cannot contain NUL bytes".into());
    }
    if let Some(why) = dangerous_argument(program, &req.args) {
        return Err(why);
    }
    Ok(())
}

/// The whole environment of a program: the fixed base (with the job's own
/// `home` and `tmp` as the executor sees them) and what the plugin passed.
pub fn environment(req: &ExecRequest, path: &str, home: &str, tmp: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_string(), path.to_string()),
        ("HOME".to_string(), home.to_string()),
        ("TMPDIR".to_string(), tmp.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("CI".to_string(), "true".to_string()),
        ("VIADUCT".to_string(), "true".to_string()),
    ]);
    env.extend(req.env.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(program: &str, args: &[&str], env: &[(&str, &str)]) -> ExecRequest {
        ExecRequest {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_pipeline_controls_cannot_change_what_runs() {
        let allow = vec!["nix".to_string(), "sh".to_string()];
        assert!(check(&req("nix", &["flake", "check", "."], &[("NIX_SHOW_STATS", "1")]), &allow).is_ok());
        assert!(check(&req("rm", &["-rf", "/"], &[]), &allow).unwrap_err().contains("allow-list"));
        assert!(check(&req("/bin/sh", &[], &[]), &["/bin/sh".into()]).unwrap_err().contains("not a path"));
        for var in
            ["LD_PRELOAD", "ld_library_path", "BASH_ENV", "NIX_CONFIG", "NODE_OPTIONS", "GIT_CONFIG_COUNT", "PATH"]
        {
            let e = check(&req("nix", &[], &[(var, "./evil.so")]), &allow).unwrap_err();
            assert!(e.contains("changes what the program loads"), "{var}: {e}");
        }
        for args in [
            &["--option", "plugin-files", "./evil.so"][..],
            &["--plugin-files", "./evil.so"],
            &["--extra-plugin-files=./evil.so"],
            &["--option", "post-build-hook", "./x"],
            &["--builders", "ssh://evil"],
        ] {
            let e = check(&req("nix", args, &[]), &allow).unwrap_err();
            assert!(e.contains("cannot be passed by a plugin"), "{args:?}: {e}");
        }
        assert!(check(&req("nix", &["--option", "substituters", ""], &[]), &allow).is_ok());
    }

    #[test]
    fn the_environment_is_fixed_plus_what_the_plugin_passes() {
        let env = environment(&req("nix", &[], &[("NIX_SHOW_STATS", "1")]), "/bin", "/h", "/t");
        assert_eq!(
            env.keys().cloned().collect::<Vec<_>>(),
            ["CI", "HOME", "LANG", "NIX_SHOW_STATS", "PATH", "TMPDIR", "VIADUCT"]
        );
    }
}
