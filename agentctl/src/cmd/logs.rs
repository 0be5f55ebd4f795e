//! `agentctl logs [-f] [--tail N] [--previous] POD [-c C]`.

use std::io::Write;
use std::process::ExitCode;

use keelson_agentctl::proto::{LogsRequest, OutputStream};

use crate::Cli;

/// Arguments of `logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new records until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Start with the last N records.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// The previous instance of a restarted container.
    #[arg(short, long)]
    pub previous: bool,
    /// The pod.
    pub pod: String,
    /// The container (default: the pod's first).
    #[arg(short, long)]
    pub container: Option<String>,
}

/// Prints records to stdout and stderr as the container wrote them.
pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let req = LogsRequest {
        pod: a.pod.clone(),
        container: a.container.clone(),
        follow: a.follow,
        tail: a.tail,
        previous: a.previous,
    };
    let mut stream = cli.connect().await?.logs(req).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(r) = stream.message().await.map_err(keelson_agentctl::Error::from)? {
        let w: &mut dyn Write =
            if r.stream == OutputStream::Stderr as i32 { &mut err } else { &mut out };
        w.write_all(&r.content)?;
        if !r.partial {
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
