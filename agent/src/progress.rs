//! Progress bars for image imports and pulls, drawn on stderr from the image store's
//! [`Progress`] events: one bar per blob (labelled with its short digest and phase) under a
//! header naming the image. `agentctl` will draw node-side progress the same way.

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use keelson_runtime::image::{Phase, Progress};
use tokio::sync::mpsc::UnboundedReceiver;

/// Draws bars for the events arriving on `rx` until the image is stored or every sender is
/// dropped. Draws nothing
/// when stderr is not a terminal (indicatif's own rule), so logs and tests stay clean.
pub async fn draw(mut rx: UnboundedReceiver<Progress>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>14} {msg:<12} [{bar:30}] {bytes:>10}/{total_bytes:<10}",
    )
    .expect("the template is a constant that indicatif accepts")
    .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(event) = rx.recv().await {
        match event {
            Progress::Resolved { reference, layers, .. } => {
                let _ = multi.println(format!("{reference}: {layers} layers"));
            }
            Progress::Blob { id, phase, done, total } => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(total).with_style(style.clone()));
                    bar.set_prefix(id);
                    bar
                });
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(phase_name(phase));
                if matches!(phase, Phase::Done | Phase::Exists | Phase::Failed) {
                    bar.finish();
                }
            }
            Progress::Stored { name, id } => {
                // The last event of an import or pull: stop drawing before anything else
                // (a container's output) is written to the terminal.
                let _ = multi.println(format!("stored {name} ({id})"));
                break;
            }
        }
    }
    for bar in bars.values() {
        bar.finish();
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting",
        Phase::Transferring => "transferring",
        Phase::Exists => "exists",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[tokio::test]
    async fn drawing_ends_when_the_senders_are_gone() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Progress::Resolved { reference: "r".into(), manifest: "m".into(), layers: 1 })
            .unwrap();
        for (phase, done) in [(Phase::Waiting, 0), (Phase::Transferring, 5), (Phase::Done, 10)] {
            tx.send(Progress::Blob { id: "abc".into(), phase, done, total: 10 }).unwrap();
        }
        tx.send(Progress::Stored { name: "n".into(), id: "i".into() }).unwrap();
        drop(tx);
        draw(rx).await;
    }
}
