//! `agentctl exec [-it] POD [-c C] -- CMD…`: the command's exit code becomes agentctl's;
//! with `-t` the local terminal is raw and follows window size changes (SIGWINCH).

use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;

use keelson_agentctl::proto::{self, exec_input::Input, exec_output::Output, ExecInput};
use tokio::io::AsyncReadExt;

use crate::Cli;

/// Arguments of `exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pass stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal (stdout and stderr become one stream).
    #[arg(short, long)]
    pub tty: bool,
    /// The pod.
    pub pod: String,
    /// The container (default: the pod's first).
    #[arg(short, long)]
    pub container: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The local terminal's size, if stdin is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, writable struct we pass.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

fn input(i: Input) -> ExecInput {
    ExecInput { input: Some(i) }
}

/// Runs the command; returns its exit code.
pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let client = cli.connect().await?;
    let size = if a.tty { terminal_size() } else { None };
    let start = proto::ExecStart {
        pod: a.pod.clone(),
        container: a.container.clone(),
        command: a.command.clone(),
        tty: a.tty,
        stdin: a.interactive,
        cols: size.map(|s| u32::from(s.0)).unwrap_or(0),
        rows: size.map(|s| u32::from(s.1)).unwrap_or(0),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
    let mut output = client.exec(start, tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
    let _raw = if a.tty && size.is_some() { RawMode::enter() } else { None };
    if a.interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(input(Input::CloseStdin(true))).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(input(Input::Stdin(buf[..n].to_vec()))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if a.tty {
        let tx = tx.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((cols, rows)) = terminal_size() {
                        let resize = proto::TerminalSize { cols: cols.into(), rows: rows.into() };
                        if tx.send(input(Input::Resize(resize))).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut exit = None;
    while let Some(msg) = output.message().await.map_err(keelson_agentctl::Error::from)? {
        match msg.output {
            Some(Output::Stdout(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Some(Output::Stderr(b)) => {
                err.write_all(&b)?;
                err.flush()?;
            }
            Some(Output::Exit(e)) => exit = Some(e),
            None => {}
        }
    }
    drop(tx);
    let exit = exit.ok_or(keelson_agentctl::Error::Truncated("exec"))?;
    Ok(ExitCode::from(u8::try_from(exit.code.clamp(0, 255)).unwrap_or(255)))
}
