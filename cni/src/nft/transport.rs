//! The OS boundary: a `NETLINK_NETFILTER` socket, behind the narrow [`Netfilter`] trait, and
//! [`FakeNetfilter`], which records what was sent and answers like the kernel would.

use std::collections::{HashMap, VecDeque};
use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::wire::{self, Writer, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_DUMP};

/// Sends datagrams to nfnetlink and receives its replies.
pub trait Netfilter {
    /// Sends one datagram (a batch, or a request).
    fn send(&mut self, datagram: &[u8]) -> io::Result<()>;

    /// Receives the next reply datagram. With `wait == false`, returns `None` when nothing
    /// is queued: nfnetlink handles a batch inside `send`, so once `send` returned every
    /// reply to it is already queued.
    fn recv(&mut self, wait: bool) -> io::Result<Option<Vec<u8>>>;
}

/// A `NETLINK_NETFILTER` socket, opened in the calling thread's network namespace.
#[derive(Debug)]
pub struct NetlinkSocket {
    socket: Socket,
}

impl NetlinkSocket {
    /// Opens and binds the socket. The namespace is fixed at this point: open it on the
    /// thread that entered the namespace to configure.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors echo only the failed message's header, not the whole message.
        socket.set_cap_ack(true)?;
        Ok(NetlinkSocket { socket })
    }
}

impl Netfilter for NetlinkSocket {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(datagram, 0)?;
        if sent != datagram.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", datagram.len()),
            ));
        }
        Ok(())
    }

    fn recv(&mut self, wait: bool) -> io::Result<Option<Vec<u8>>> {
        let nowait = if wait { 0 } else { libc::MSG_DONTWAIT };
        // Peek for the size first so a large dump datagram is never truncated.
        let mut probe: Vec<u8> = Vec::with_capacity(NLMSG_HDRLEN);
        let size = match self.socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC | nowait) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf: Vec<u8> = Vec::with_capacity(size.max(NLMSG_HDRLEN));
        let n = self.socket.recv(&mut buf, nowait)?;
        buf.truncate(n);
        Ok(Some(buf))
    }
}

/// A fake nfnetlink for unit tests: records every datagram and answers each message that
/// asks for an acknowledgement with one (or with the error configured for its type), and
/// each dump request with the replies configured for its type followed by `NLMSG_DONE`.
#[derive(Debug, Default)]
pub struct FakeNetfilter {
    /// Every datagram sent, in order.
    pub sent: Vec<Vec<u8>>,
    queued: VecDeque<Vec<u8>>,
    failures: HashMap<u16, i32>,
    dumps: HashMap<u16, Vec<Vec<u8>>>,
}

impl FakeNetfilter {
    /// A fake that acknowledges everything.
    pub fn new() -> Self {
        FakeNetfilter::default()
    }

    /// Answers messages of netlink type `ty` (e.g. `0x0a06`, NEWRULE) with `-errno`.
    pub fn fail(&mut self, ty: u16, errno: i32) {
        self.failures.insert(ty, errno);
    }

    /// Answers a dump request of type `ty` with one message per entry of `payloads` (each
    /// an `nfgenmsg` and attributes), of type `reply_ty`.
    pub fn dump(&mut self, ty: u16, reply_ty: u16, payloads: Vec<Vec<u8>>) {
        let mut framed = Vec::new();
        for p in payloads {
            let mut w = Writer::default();
            w.begin_raw(reply_ty, 0x2, 0);
            w.extend(&p);
            w.end_message();
            framed.push(w.into_bytes());
        }
        self.dumps.insert(ty, framed);
    }

    fn reply(&mut self, ty: u16, flags: u16, seq: u32, error: i32) {
        let mut w = Writer::default();
        w.begin_raw(NLMSG_ERROR, 0, seq);
        w.extend(&error.to_ne_bytes());
        // The echoed request header (capped: no payload).
        w.extend(&(NLMSG_HDRLEN as u32).to_ne_bytes());
        w.extend(&ty.to_ne_bytes());
        w.extend(&flags.to_ne_bytes());
        w.extend(&seq.to_ne_bytes());
        w.extend(&0u32.to_ne_bytes());
        w.end_message();
        self.queued.push_back(w.into_bytes());
    }
}

impl Netfilter for FakeNetfilter {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.sent.push(datagram.to_vec());
        let msgs =
            wire::messages(datagram).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for m in msgs {
            if m.flags & NLM_F_DUMP == NLM_F_DUMP {
                let mut out = Vec::new();
                for reply in self.dumps.get(&m.ty).cloned().unwrap_or_default() {
                    let mut r = reply;
                    r[8..12].copy_from_slice(&m.seq.to_ne_bytes());
                    out.extend(r);
                }
                let mut w = Writer::default();
                w.begin_raw(NLMSG_DONE, 0x2, m.seq);
                w.extend(&0i32.to_ne_bytes());
                w.end_message();
                out.extend(w.into_bytes());
                self.queued.push_back(out);
            } else if m.flags & NLM_F_ACK != 0 {
                let error = self.failures.get(&m.ty).map_or(0, |e| -e);
                self.reply(m.ty, m.flags, m.seq, error);
            }
        }
        Ok(())
    }

    fn recv(&mut self, wait: bool) -> io::Result<Option<Vec<u8>>> {
        match self.queued.pop_front() {
            Some(d) => Ok(Some(d)),
            None if wait => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "fake: nothing to receive"))
            }
            None => Ok(None),
        }
    }
}
