//! `viaduct`: the Viaduct command-line client.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return cli::Failure::Usage(format!("cannot start the async runtime: {e}")).report(),
    };
    let code = match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    };
    // Not torn down: the process ends now, and the kernel closes what the
    // runtime holds (the connection). Dropping it would only delay the
    // exit — by waiting for a blocking read of the terminal, at worst.
    std::mem::forget(runtime);
    code
}
