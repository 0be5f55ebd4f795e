//! The kubelet's CRI container log format: one line per record,
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`.
//!
//! `F` ends a line of the container's output; `P` is a piece of a longer line (more than
//! [`MAX_LINE`] bytes) or the last bytes of a stream that ended without a newline, and the
//! reader joins `P` records with the next record of the same stream. The shim writes these
//! files with [`LogWriter`], which also rotates them by size and count: the live file keeps its
//! name (`<restart>.log`) and rotated ones get a sortable UTC suffix
//! (`<restart>.log.20261122-023000.123456789`). The runtime reads them with [`parse_line`] and
//! [`log_files`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

/// The longest piece of a line written as one record.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output (also a terminal's output).
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The name used in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the shim read it.
    pub timestamp: DateTime<Utc>,
    /// From which stream.
    pub stream: Stream,
    /// A piece of a longer line (`P`) rather than a line's end (`F`).
    pub partial: bool,
    /// The bytes, without the newline.
    pub content: Vec<u8>,
}

/// A line that is not a CRI log record.
#[derive(Debug, thiserror::Error)]
#[error("malformed CRI log line {line:?}")]
pub struct ParseError {
    /// The line, shortened.
    pub line: String,
}

/// Parses one record (with or without its trailing newline).
pub fn parse_line(line: &[u8]) -> Result<LogEntry, ParseError> {
    let err =
        || ParseError { line: String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned() };
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = parts.next().ok_or_else(err)?;
    let stream = parts.next().ok_or_else(err)?;
    let tag = parts.next().ok_or_else(err)?;
    let content = parts.next().unwrap_or(b"");
    let ts = std::str::from_utf8(ts).map_err(|_| err())?;
    let timestamp = DateTime::parse_from_rfc3339(ts).map_err(|_| err())?.with_timezone(&Utc);
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(err()),
    };
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        _ => return Err(err()),
    };
    Ok(LogEntry { timestamp, stream, partial, content: content.to_vec() })
}

/// Formats one record, newline included.
pub fn format_record(out: &mut Vec<u8>, ts: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// The current time in the log's timestamp format.
pub fn timestamp_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The files of one container log, oldest first, the live file (`path`) last if it exists.
pub fn log_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut rotated = rotated_files(path)?;
    if path.exists() {
        rotated.push(path.to_owned());
    }
    Ok(rotated)
}

fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                if let Some(n) = e.file_name().to_str() {
                    if n.starts_with(&prefix) && !n.ends_with(".tmp") {
                        out.push(e.path());
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Writes a container's output as CRI log records, rotating by size and count.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) or creates `path` and its directory.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records output read from `stream`: complete lines as `F` records, pieces longer than
    /// [`MAX_LINE`] as `P` records; an unfinished line is kept until more arrives.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let ts = timestamp_now();
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut chunks = pending.chunks(MAX_LINE).peekable();
            if chunks.peek().is_none() {
                format_record(&mut out, &ts, stream, false, b"");
            }
            while let Some(c) = chunks.next() {
                format_record(&mut out, &ts, stream, chunks.peek().is_some(), c);
            }
            pending.clear();
        }
        pending.extend_from_slice(rest);
        while pending.len() > MAX_LINE {
            let tail = pending.split_off(MAX_LINE);
            format_record(&mut out, &ts, stream, true, &pending);
            pending = tail;
        }
        self.pending[stream.index()] = pending;
        self.emit(&out)
    }

    /// At the end of `stream`: writes an unfinished line as a `P` record.
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(pending.len() + 64);
        format_record(&mut out, &timestamp_now(), stream, true, &pending);
        self.emit(&out)
    }

    fn emit(&mut self, out: &[u8]) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        if self.size > 0 && self.size + out.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(out)?;
        self.size += out.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let suffix = Utc::now().format("%Y%m%d-%H%M%S%.9f").to_string();
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".");
        rotated.push(&suffix);
        fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        let old = rotated_files(&self.path)?;
        let keep = self.max_files.saturating_sub(1) as usize;
        if old.len() > keep {
            for p in &old[..old.len() - keep] {
                fs::remove_file(p)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<LogEntry> {
        let mut v = Vec::new();
        for f in log_files(path).unwrap() {
            let data = fs::read(f).unwrap();
            for l in data.split_inclusive(|&b| b == b'\n') {
                v.push(parse_line(l).unwrap());
            }
        }
        v
    }

    #[test]
    fn complete_lines_become_full_records_per_stream() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c/0.log");
        let mut w = LogWriter::open(&p, 1 << 20, 5).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\n\nworld\n").unwrap();
        let r = records(&p);
        let got: Vec<_> = r.iter().map(|e| (e.stream, e.partial, e.content.as_slice())).collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stderr, false, &b"oops"[..]),
                (Stream::Stdout, false, &b"hello"[..]),
                (Stream::Stdout, false, &b""[..]),
                (Stream::Stdout, false, &b"world"[..]),
            ]
        );
    }

    #[test]
    fn long_lines_and_unterminated_ends_are_partial_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 1 << 20, 5).unwrap();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\ntail").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let r = records(&p);
        let shape: Vec<_> = r.iter().map(|e| (e.partial, e.content.len())).collect();
        assert_eq!(shape, vec![(true, MAX_LINE), (true, MAX_LINE), (false, 10), (true, 4)]);
        assert_eq!(r[3].content, b"tail");
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 200, 3).unwrap();
        for i in 0..40 {
            w.write(Stream::Stdout, format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let files = log_files(&p).unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files.last().unwrap(), &p);
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 200);
        }
        // The newest lines survive, in order.
        let r = records(&p);
        assert_eq!(r.last().unwrap().content, b"line 039");
        let nums: Vec<u32> = r
            .iter()
            .map(|e| std::str::from_utf8(&e.content[5..]).unwrap().parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn records_parse_back_with_their_timestamp() {
        let mut out = Vec::new();
        format_record(&mut out, "2026-11-22T02:30:00.123456789Z", Stream::Stderr, true, b"a b  c");
        assert_eq!(out, b"2026-11-22T02:30:00.123456789Z stderr P a b  c\n");
        let e = parse_line(&out).unwrap();
        assert_eq!(e.timestamp.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(
            (e.stream, e.partial, e.content.as_slice()),
            (Stream::Stderr, true, &b"a b  c"[..])
        );
        assert!(parse_line(b"yesterday stdout F x").is_err());
        assert!(parse_line(b"2026-11-22T02:30:00Z stdin F x").is_err());
    }
}
