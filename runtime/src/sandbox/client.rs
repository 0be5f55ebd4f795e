//! The runtime's side of the shim protocol: an async client over tokio's `UnixStream`.
//!
//! Every call opens its own connection and pipelines the hello line with the request, so
//! calls never queue behind each other (a `wait` may take minutes) and a dead connection
//! never poisons the next call. Connecting to a local socket costs microseconds.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use keelson_shim_proto::{
    check_version, decode, encode, fdpass, Event, Hello, HelloReply, Request, Response,
    PROTOCOL_VERSION,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::api::{Error, Result};
use crate::config::SandboxId;

/// How long a request may take, except those that wait for an exit. Generous: a container
/// create on a loaded node can take seconds.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a sandbox's shim listens.
#[derive(Debug, Clone)]
pub(crate) struct ShimClient {
    pub sandbox: SandboxId,
    pub socket: PathBuf,
}

/// One connection to a shim.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: UnixStream,
    sandbox: SandboxId,
    rbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl ShimClient {
    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::ShimIo { sandbox: self.sandbox.clone(), op, source }
    }

    /// Connects and sends the hello line, plus `first` (a request line) in the same message.
    async fn open(&self, first: (&Request, &[BorrowedFd<'_>]), op: &'static str) -> Result<Conn> {
        let stream = UnixStream::connect(&self.socket).await.map_err(self.io(op))?;
        let mut c =
            Conn { stream, sandbox: self.sandbox.clone(), rbuf: Vec::new(), fds: VecDeque::new() };
        let mut data = encode(&Hello { protocol: PROTOCOL_VERSION });
        let (req, fds) = first;
        data.extend(encode(req));
        c.send(&data, fds).await.map_err(self.io(op))?;
        let line = c.recv_line().await.map_err(self.io(op))?;
        match decode::<HelloReply>(&line) {
            Ok(h) => check_version(h.protocol)
                .map_err(|source| Error::Protocol { sandbox: self.sandbox.clone(), source })?,
            Err(source) => {
                return Err(match decode::<Response>(&line) {
                    Ok(Response::Error { message }) => {
                        Error::Shim { sandbox: self.sandbox.clone(), op, message }
                    }
                    _ => Error::Protocol { sandbox: self.sandbox.clone(), source },
                })
            }
        }
        Ok(c)
    }

    /// One request, with descriptors; returns the response and the descriptors that came
    /// with it. A [`Response::Error`] becomes [`Error::Shim`].
    pub async fn call(
        &self,
        op: &'static str,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>)> {
        let call = async {
            let mut c = self.open((req, fds), op).await?;
            c.response(op).await
        };
        if matches!(req, Request::Wait { .. } | Request::WaitExec { .. }) {
            return call.await;
        }
        // A shim that stopped answering must not hang the agent.
        tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| Error::ShimIo {
            sandbox: self.sandbox.clone(),
            op,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {CALL_TIMEOUT:?}"),
            ),
        })?
    }

    /// A request whose only expected answer is `ok`.
    pub async fn call_ok(&self, op: &'static str, req: &Request) -> Result<()> {
        match self.call(op, req, &[]).await?.0 {
            Response::Ok => Ok(()),
            other => Err(unexpected(&self.sandbox, op, &other)),
        }
    }

    /// Opens an event subscription.
    pub async fn subscribe(&self) -> Result<Conn> {
        let sub = async {
            let mut c = self.open((&Request::Subscribe, &[]), "subscribe").await?;
            match c.response("subscribe").await?.0 {
                Response::Subscribed => Ok(c),
                other => Err(unexpected(&self.sandbox, "subscribe", &other)),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, sub).await.map_err(|_| Error::ShimIo {
            sandbox: self.sandbox.clone(),
            op: "subscribe",
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {CALL_TIMEOUT:?}"),
            ),
        })?
    }
}

pub(crate) fn unexpected(sandbox: &SandboxId, op: &'static str, resp: &Response) -> Error {
    Error::Shim { sandbox: sandbox.clone(), op, message: format!("unexpected answer {resp:?}") }
}

impl Conn {
    async fn send(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            let f = if off == 0 { fds } else { &[] };
            let stream = &self.stream;
            let n = stream
                .async_io(Interest::WRITABLE, || {
                    fdpass::send_with_fds(stream.as_fd(), &data[off..], f).map_err(io::Error::from)
                })
                .await?;
            off += n;
        }
        Ok(())
    }

    async fn recv_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let rest = self.rbuf.split_off(pos + 1);
                return Ok(std::mem::replace(&mut self.rbuf, rest));
            }
            let mut buf = [0u8; 8192];
            let stream = &self.stream;
            let (n, fds) = stream
                .async_io(Interest::READABLE, || {
                    fdpass::recv_with_fds(stream.as_fd(), &mut buf).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "shim closed the connection",
                ));
            }
            self.rbuf.extend_from_slice(&buf[..n]);
            self.fds.extend(fds);
        }
    }

    /// Reads one response and the descriptors that came with it.
    pub async fn response(&mut self, op: &'static str) -> Result<(Response, Vec<OwnedFd>)> {
        let line = self.recv_line().await.map_err(|source| Error::ShimIo {
            sandbox: self.sandbox.clone(),
            op,
            source,
        })?;
        let resp: Response = decode(&line)
            .map_err(|source| Error::Protocol { sandbox: self.sandbox.clone(), source })?;
        let fds = self.fds.drain(..).collect();
        match resp {
            Response::Error { message } => {
                Err(Error::Shim { sandbox: self.sandbox.clone(), op, message })
            }
            r => Ok((r, fds)),
        }
    }

    /// The next event of a subscription; `None` when the shim closed it.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        match self.recv_line().await {
            Ok(line) => decode(&line)
                .map(Some)
                .map_err(|source| Error::Protocol { sandbox: self.sandbox.clone(), source }),
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(None)
            }
            Err(source) => {
                Err(Error::ShimIo { sandbox: self.sandbox.clone(), op: "read event", source })
            }
        }
    }
}
