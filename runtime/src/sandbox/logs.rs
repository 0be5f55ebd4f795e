//! Reading a container's CRI log: the rotated files oldest first, then the live one; `tail`
//! keeps the last records; `follow` keeps reading the live file as the shim appends to it
//! (woken by inotify, no polling) until the container has exited and everything is read.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use keelson_shim_proto::cri_log::{self, LogEntry};

use crate::api::{Error, Result};

fn log_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Log { path: path.to_owned(), source }
}

/// Every record now in the log files of `path`, at most the last `tail`; also returns the
/// byte offset reached in the live file (for following).
pub(crate) fn read_all(path: &Path, tail: Option<usize>) -> Result<(Vec<LogEntry>, u64)> {
    let files = cri_log::log_files(path).map_err(log_err(path))?;
    let mut out: VecDeque<LogEntry> = VecDeque::new();
    let mut offset = 0;
    for f in files {
        let file = match std::fs::File::open(&f) {
            Ok(file) => file,
            // Rotated away meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(log_err(&f)(e)),
        };
        let mut r = BufReader::new(file);
        let mut line = Vec::new();
        let mut pos = 0u64;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(log_err(&f))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            pos += n as u64;
            if let Ok(e) = cri_log::parse_line(&line) {
                out.push_back(e);
                if let Some(t) = tail {
                    while out.len() > t {
                        out.pop_front();
                    }
                }
            }
        }
        if f == path {
            offset = pos;
        }
    }
    Ok((out.into(), offset))
}

/// Whether the write end of the `done` pipe has been closed (the container has exited).
fn is_done(done: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: done.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

/// Follows the live file from `offset`: sends records as they are appended, until the write
/// end of the pipe whose read end is `done` is closed (the container has exited, its output
/// drained) and the file has nothing more. Runs on a blocking thread, asleep in `poll` on
/// inotify (writes, rotation) and `done`.
pub(crate) fn follow(
    path: PathBuf,
    mut offset: u64,
    tx: tokio::sync::mpsc::Sender<Result<LogEntry>>,
    done: OwnedFd,
) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = path.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/"));
    let ino = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
        Ok(i) => i,
        Err(e) => {
            let _ = tx.blocking_send(Err(log_err(&path)(e.into())));
            return;
        }
    };
    if let Err(e) = ino.add_watch(
        &dir,
        AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_FROM,
    ) {
        let _ = tx.blocking_send(Err(log_err(&dir)(e.into())));
        return;
    }
    let mut partial = Vec::new();
    loop {
        // Drain what is there.
        let exited = is_done(&done);
        match std::fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    // Rotated: the live file is new.
                    offset = 0;
                    partial.clear();
                }
                let mut r = BufReader::new(f);
                if r.seek(SeekFrom::Start(offset)).is_ok() {
                    loop {
                        let mut line = std::mem::take(&mut partial);
                        let n = match r.read_until(b'\n', &mut line) {
                            Ok(n) => n,
                            Err(_) => break,
                        };
                        offset += n as u64;
                        if line.last() != Some(&b'\n') {
                            partial = line;
                            break;
                        }
                        if let Ok(e) = cri_log::parse_line(&line) {
                            if tx.blocking_send(Ok(e)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(log_err(&path)(e)));
                return;
            }
        }
        if exited {
            return;
        }
        if tx.is_closed() {
            return;
        }
        // Sleep until the file changes or the container is done. The timeout only bounds how
        // late a reader that went away is noticed.
        let mut pfds = [
            libc::pollfd { fd: ino.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: done.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: a valid array of two pollfds for the duration of the call.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 5000) };
        let _ = ino.read_events();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use keelson_shim_proto::cri_log::{LogWriter, Stream};

    #[test]
    fn tail_keeps_the_last_records_across_rotated_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 300, 4).unwrap();
        for i in 0..30 {
            w.write(Stream::Stdout, format!("n{i}\n").as_bytes()).unwrap();
        }
        let (all, off) = read_all(&p, None).unwrap();
        assert_eq!(off, std::fs::metadata(&p).unwrap().len());
        assert_eq!(all.last().unwrap().content, b"n29");
        let (t, _) = read_all(&p, Some(3)).unwrap();
        let got: Vec<_> = t.iter().map(|e| String::from_utf8(e.content.clone()).unwrap()).collect();
        assert_eq!(got, ["n27", "n28", "n29"]);
    }

    #[test]
    fn follow_sees_appended_records_and_ends_when_done() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 1 << 20, 2).unwrap();
        w.write(Stream::Stdout, b"first\n").unwrap();
        let (_, off) = read_all(&p, None).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let (done_r, done_w) = nix::unistd::pipe().unwrap();
        let pp = p.clone();
        let h = std::thread::spawn(move || follow(pp, off, tx, done_r));
        w.write(Stream::Stderr, b"second\n").unwrap();
        let e = rx.blocking_recv().unwrap().unwrap();
        assert_eq!((e.stream, e.content.as_slice()), (Stream::Stderr, &b"second"[..]));
        w.write(Stream::Stdout, b"third\n").unwrap();
        drop(done_w);
        let e = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(e.content, b"third");
        h.join().unwrap();
        assert!(rx.blocking_recv().is_none());
    }
}
