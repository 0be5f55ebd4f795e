//! `agentctl completion SHELL`.

use std::process::ExitCode;

/// Arguments of `completion`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for the shell.
pub fn run(cmd: &mut clap::Command, a: &Args) -> anyhow::Result<ExitCode> {
    clap_complete::generate(a.shell, cmd, "agentctl", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
