//! `agentctl images ls|import FILE|pull REF|rm REF`, with progress bars for import and pull
//! drawn like `keelson run` draws them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use keelson_agentctl::proto::{self, image_progress::Event, BlobPhase};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::output::{age, print};
use crate::Cli;

/// Arguments of `images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Images,
}

/// What to do with images.
#[derive(Debug, clap::Subcommand)]
pub enum Images {
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Upload and import an OCI layout tar or `docker save` archive.
    Import {
        /// The archive.
        file: PathBuf,
        /// The name to record (default: the archive's own).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from its registry onto the node.
    Pull {
        /// The image reference.
        reference: String,
    },
    /// Remove an image's record (its blobs go at the next GC).
    #[command(alias = "remove")]
    Rm {
        /// The image reference or id.
        reference: String,
    },
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if v < 1000.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1000.0;
    }
    format!("{v:.1} TB")
}

/// Runs the images subcommand.
pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let client = cli.connect().await?;
    match &a.command {
        Images::Ls => {
            let list = client.list_images().await?;
            let rows = list
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.id.trim_start_matches("sha256:").chars().take(12).collect(),
                        human(i.size),
                        i.platform.clone(),
                        age(i.stored_at),
                    ]
                })
                .collect();
            print(cli.output, &list, &["NAME", "ID", "SIZE", "PLATFORM", "STORED"], rows)?;
        }
        Images::Import { file, name } => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let bars = tokio::spawn(draw(rx));
            let r = client.import_image(file, name.clone(), Some(tx)).await;
            let _ = bars.await;
            let stored = r?;
            println!("{} {}", stored.name, stored.id);
        }
        Images::Pull { reference } => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let bars = tokio::spawn(draw(rx));
            let r = client.pull_image(reference, Some(tx)).await;
            let _ = bars.await;
            let stored = r?;
            println!("{} {}", stored.name, stored.id);
        }
        Images::Rm { reference } => {
            for name in client.remove_image(reference).await? {
                println!("removed {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn phase_name(p: i32) -> &'static str {
    match BlobPhase::try_from(p).unwrap_or(BlobPhase::Unspecified) {
        BlobPhase::Waiting => "waiting",
        BlobPhase::Transferring => "transferring",
        BlobPhase::Exists => "exists",
        BlobPhase::Done => "done",
        BlobPhase::Failed => "failed",
        BlobPhase::Unspecified => "",
    }
}

/// Draws one bar per blob (and one for the upload) on stderr until the events end. Draws
/// nothing when stderr is not a terminal.
async fn draw(mut rx: UnboundedReceiver<proto::ImageProgress>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>14} {msg:<12} [{bar:30}] {bytes:>10}/{total_bytes:<10}",
    )
    .expect("the template is a constant that indicatif accepts")
    .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let blob = match ev.event {
            Some(Event::Resolved(r)) => {
                let _ = multi.println(format!("{}: {} layers", r.reference, r.layers));
                continue;
            }
            Some(Event::Stored(s)) => {
                let _ = multi.println(format!("stored {} ({})", s.name, s.id));
                continue;
            }
            Some(Event::Blob(b)) | Some(Event::Upload(b)) => b,
            None => continue,
        };
        let bar = bars.entry(blob.id.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(blob.total).with_style(style.clone()));
            bar.set_prefix(blob.id.clone());
            bar
        });
        bar.set_length(blob.total);
        bar.set_position(blob.done);
        let phase = BlobPhase::try_from(blob.phase).unwrap_or(BlobPhase::Unspecified);
        bar.set_message(phase_name(blob.phase));
        if matches!(phase, BlobPhase::Done | BlobPhase::Exists | BlobPhase::Failed)
            || (blob.id == "upload" && blob.done >= blob.total)
        {
            bar.finish();
        }
    }
    for bar in bars.values() {
        bar.finish();
    }
}
