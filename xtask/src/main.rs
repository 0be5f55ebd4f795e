//! Orchestration for Keelson's build.
//!
//! Subcommands:
//! - `test-images --out DIR`: the project's own reproducible test images, built from Debian's
//!   `busybox-static` packages (see [`test_images`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod test_images;

/// Keelson's build orchestration.
#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Orchestration for Keelson's build")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the reproducible busybox test images (OCI layout, OCI tar, docker archive).
    TestImages {
        /// Output directory (replaced as a whole).
        #[arg(long)]
        out: PathBuf,
        /// Directory holding `busybox-static_*_{amd64,arm64}.deb` (dev/setup fills it).
        #[arg(long, env = "KEELSON_DEBS", default_value = "/var/cache/keelson/debs")]
        debs: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::TestImages { out, debs } => {
            let inputs = test_images::Inputs::from_debs(&debs)?;
            test_images::build(&inputs, &out)?;
            eprintln!("test images written to {}", out.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
