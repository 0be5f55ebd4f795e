//! `keelson run --image PATH_OR_REF [--name NAME] [--tty] -- CMD…`

use std::path::PathBuf;

use anyhow::{Context, Result};
use keelson_agent::run::{self, Output, Paths, RunOptions};

/// Arguments of `keelson run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// An OCI layout directory or archive, a `docker save` archive, or an image reference
    /// (looked up in the store, pulled when absent).
    #[arg(long)]
    image: String,
    /// The pod's and the container's name.
    #[arg(long, default_value = "run")]
    name: String,
    /// Give the container a terminal.
    #[arg(long)]
    tty: bool,
    /// Persistent data (the image store is `<data-dir>/images`).
    #[arg(long, default_value = "/var/lib/keelson")]
    data_dir: PathBuf,
    /// Runtime state: sandboxes, shim sockets, network namespace pins.
    #[arg(long, default_value = "/run/keelson")]
    state_dir: PathBuf,
    /// Root of the pods' CRI logs.
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// The `keelson-shim` binary (default: next to this one).
    #[arg(long, env = "KEELSON_SHIM")]
    shim: Option<PathBuf>,
    /// The command and its arguments (the image's entrypoint and cmd when empty).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs the subcommand; returns the process's exit status.
pub fn main(args: RunArgs) -> i32 {
    match run_args(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keelson run: {e:#}");
            125
        }
    }
}

fn run_args(args: RunArgs) -> Result<i32> {
    let mut paths = Paths::system().context("find the keelson-shim binary")?;
    paths.data_dir = args.data_dir;
    paths.state_dir = args.state_dir;
    paths.log_root = args.log_root;
    if let Some(shim) = args.shim {
        paths.shim = shim;
    }
    let opts = RunOptions {
        image: args.image,
        name: args.name,
        tty: args.tty,
        command: args.command,
        paths,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        let out = Output { stdout: &mut stdout, stderr: &mut stderr };
        let ended = run::run(&opts, out, interrupted()).await?;
        match ended {
            run::Ended::Exited(code) => {
                eprintln!("keelson run: container {} exited with code {code}", opts.name)
            }
            run::Ended::Interrupted => {
                eprintln!("keelson run: interrupted; container {} removed", opts.name)
            }
        }
        Ok(ended.code())
    })
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
