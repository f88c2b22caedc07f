//! The `viaduct` command-line tool, on top of the SDK.

/// `eprintln!` in one write: Rust's stderr is unbuffered, so `eprintln!`
/// writes each piece of its format on its own (six writes for a step's
/// line, each waking whoever reads the terminal or the pipe).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::say_line(format_args!($($arg)*))
    };
}

pub mod admin;
pub mod args;
pub mod commands;
pub mod debug;
pub mod deployments;
pub mod exec;
pub mod files;
pub mod login;
pub mod people;
pub mod stats;
pub mod terminal;
pub mod view;

use std::process::ExitCode;

use viaduct_sdk::Client;

use self::args::{Cli, Command};

/// Writes `line` and a newline to stderr at once (see `say!`).
pub(crate) fn say_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut text = line.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// How a command failed, and so the exit status.
#[derive(Debug)]
pub enum Failure {
    /// The run ended without success (exit 1).
    RunFailed(String),
    /// Bad arguments or unreadable files (exit 2).
    Usage(String),
    /// Invalid input, e.g. a pipeline file with errors (exit 2); the
    /// details were printed already when the message is empty.
    Invalid(String),
    /// The server could not be reached or refused (exit 3).
    Server(String),
    /// Exit with this code, saying nothing (a debug shell's own).
    Exit(u8),
}

impl From<viaduct_sdk::Error> for Failure {
    fn from(e: viaduct_sdk::Error) -> Self {
        match &e {
            viaduct_sdk::Error::Status(s) => Self::from(s.clone()),
            viaduct_sdk::Error::InvalidUrl { .. }
            | viaduct_sdk::Error::InvalidToken
            | viaduct_sdk::Error::Plaintext { .. }
            | viaduct_sdk::Error::Tls(_) => Self::Usage(e.to_string()),
            _ => Self::Server(e.to_string()),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            // A pipeline's errors are one per line, file:line:column first.
            tonic::Code::InvalidArgument => Self::Invalid(s.message().to_string()),
            tonic::Code::NotFound | tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => {
                Self::Usage(viaduct_sdk::status_line(&s))
            }
            tonic::Code::Unauthenticated => Self::Server(format!(
                "{} (sign in with `viaduct login`, or pass a token with VIADUCT_TOKEN or --token-file)",
                viaduct_sdk::status_line(&s)
            )),
            _ => Self::Server(viaduct_sdk::status_line(&s)),
        }
    }
}

impl Failure {
    /// Prints the failure (one line, or the pipeline's error lines) and
    /// returns the exit status.
    pub fn report(self) -> ExitCode {
        let (msg, code) = match self {
            Self::RunFailed(m) => (m, 1),
            Self::Usage(m) => (format!("viaduct: {m}"), 2),
            Self::Invalid(m) => (m, 2),
            Self::Server(m) => (format!("viaduct: {m}"), 3),
            Self::Exit(code) => (String::new(), code),
        };
        if !msg.is_empty() {
            say!("{msg}");
        }
        ExitCode::from(code)
    }
}

fn token(cli: &Cli) -> Result<Option<String>, Failure> {
    if let Some(t) = &cli.token {
        return Ok(Some(t.clone()));
    }
    match &cli.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| Failure::Usage(format!("cannot read the token file {}: {e}", f.display()))),
        // What `viaduct login` kept for this server.
        None => Ok(login::saved_token(&cli.server)),
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Validate { files } => return commands::validate(files),
        Command::Exec { args } => return exec::exec(args),
        _ => {}
    }
    let transport = viaduct_sdk::Transport::from_files(cli.ca_cert.as_deref(), cli.insecure, None, None)?;
    match &cli.command {
        Command::Login { no_browser } => return login::login(&cli, &transport, *no_browser).await,
        Command::Logout => return login::logout(&cli, &transport).await,
        _ => {}
    }
    let client = Client::connect_with(&cli.server, token(&cli)?, &transport).await?;
    match cli.command {
        Command::Submit(a) => commands::submit(&client, a).await,
        Command::Validate { .. } | Command::Exec { .. } => Ok(()),
        Command::Runs(c) => commands::runs(&client, c).await,
        Command::Logs { id, follow } => commands::print_logs(&client, &id, follow).await.map(drop),
        Command::Cancel(a) => commands::cancel(&client, a).await,
        Command::Retry(a) => commands::retry(&client, a).await,
        Command::Debug(a) => debug::debug(&client, a).await,
        Command::Watch { run, after, json } => commands::watch(&client, run, after, json).await,
        Command::Runners(c) => commands::runners(&client, c).await,
        Command::Pipelines(c) => commands::pipelines(&client, c).await,
        Command::Repos(c) => commands::repos(&client, *c).await,
        Command::Secrets(c) => commands::secrets(&client, c).await,
        Command::Plugins(c) => files::plugins(&client, c).await,
        Command::Artifacts(c) => files::artifacts(&client, c).await,
        Command::Caches(c) => files::caches(&client, c).await,
        Command::Environments(c) => deployments::environments(&client, c).await,
        Command::Deployments(c) => deployments::deployments(&client, c).await,
        Command::Deploy(c) => deployments::deploy(&client, c).await,
        Command::Services(c) => deployments::services(&client, c).await,
        Command::Tokens(c) => people::tokens(&client, c).await,
        Command::Whoami => people::whoami(&client).await,
        Command::Login { .. } | Command::Logout => Ok(()),
        Command::Users(c) => people::users(&client, c).await,
        Command::Admin(c) => admin::admin(&client, c).await,
        Command::Stats(a) => stats::stats(&client, a).await,
        Command::Audit { limit, before, actor, json } => people::audit(&client, limit, before, actor, json).await,
        Command::Trigger { repo, git_ref, commit, inputs, follow } => {
            commands::trigger(&client, repo, git_ref, commit, inputs, follow).await
        }
    }
}
