//! The shim's single-threaded event loop: `poll(2)` over a signalfd (SIGCHLD, SIGTERM), the
//! listening socket, client connections and the containers' output (pipes or PTY masters).
//!
//! Requests that take time (create, exec) fork a libcontainer child ([`crate::child`]) and are
//! answered when the shim reaps that child; one child runs at a time, later ones queue, so
//! libcontainer's own temporary names never race. Requests that wait (`wait`, `wait_exec`) are
//! answered when the shim reaps the process. A connection with an answer pending reads no
//! further requests until it is answered.
//!
//! Output is written to the CRI log as it arrives and copied to attached clients through
//! non-blocking pipes: an attached client that does not keep up loses output (the log never
//! does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use keelson_shim_proto::cri_log::{LogWriter, Stream};
use keelson_shim_proto::state::{self, ContainerState, ContainerStatus, ExitStatus, STATE_VERSION};
use keelson_shim_proto::{
    check_version, decode, encode, fdpass, CreateRequest, Event, ExecRequest, Hello, HelloReply,
    Request, Response, ShimConfig, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::child::{self, Job, Stdio};
use crate::{diag, sys};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Signal,
    Listener,
    Conn(u64),
    Out(String, Stream),
}

struct Conn {
    sock: UnixStream,
    rbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    hello: bool,
    waiting: bool,
    subscribed: bool,
    closed: bool,
}

struct Attacher {
    out: OwnedFd,
    err: Option<OwnedFd>,
}

struct Container {
    state: ContainerState,
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    master: Option<OwnedFd>,
    log: LogWriter,
    attachers: Vec<Attacher>,
    waiters: Vec<u64>,
}

struct ExecProc {
    container_id: String,
    pid: Option<i32>,
    exit: Option<ExitStatus>,
    waiters: Vec<u64>,
}

enum JobKind {
    Create(String),
    Exec(String, bool),
}

struct QueuedJob {
    conn: u64,
    kind: JobKind,
    job: Job,
    stdio: Stdio,
}

struct RunningJob {
    pid: i32,
    sock: UnixStream,
    conn: u64,
    kind: JobKind,
}

enum Owner {
    Init(String),
    Exec(String),
}

/// The shim's whole state.
pub struct Server {
    cfg: ShimConfig,
    listener: UnixListener,
    sigfd: SignalFd,
    netns_pinned: bool,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    containers: BTreeMap<String, Container>,
    execs: HashMap<String, ExecProc>,
    queue: VecDeque<QueuedJob>,
    running: Option<RunningJob>,
    owners: HashMap<i32, Owner>,
    early_exits: HashMap<i32, (i32, Option<i32>)>,
    exit_code: Option<i32>,
}

fn decode_status(ws: WaitStatus) -> Option<(i32, i32, Option<i32>)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code, None)),
        WaitStatus::Signaled(pid, sig, _) => {
            Some((pid.as_raw(), 128 + sig as i32, Some(sig as i32)))
        }
        _ => None,
    }
}

impl Server {
    /// Sets up signal handling; the loop starts with [`Server::run`].
    pub fn new(cfg: ShimConfig, listener: UnixListener, netns_pinned: bool) -> Self {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().expect("blocking signals in a single-threaded process cannot fail");
        // SAFETY: ignoring SIGPIPE installs no handler; writes to closed pipes return EPIPE.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
            .expect("ignoring SIGPIPE cannot fail");
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .expect("signalfd with a valid mask cannot fail");
        let mut s = Self {
            cfg,
            listener,
            sigfd,
            netns_pinned,
            conns: BTreeMap::new(),
            next_conn: 1,
            containers: BTreeMap::new(),
            execs: HashMap::new(),
            queue: VecDeque::new(),
            running: None,
            owners: HashMap::new(),
            early_exits: HashMap::new(),
            exit_code: None,
        };
        s.reap();
        s
    }

    /// Serves until shut down; returns the process exit code.
    pub fn run(&mut self) -> i32 {
        loop {
            if let Some(code) = self.exit_code {
                return code;
            }
            let mut toks = Vec::new();
            let mut pfds = Vec::new();
            let mut add = |t: Token, fd: RawFd| {
                toks.push(t);
                pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            };
            add(Token::Signal, self.sigfd.as_fd().as_raw_fd());
            add(Token::Listener, self.listener.as_raw_fd());
            for (id, c) in &self.conns {
                add(Token::Conn(*id), c.sock.as_raw_fd());
            }
            for (id, c) in &self.containers {
                if let Some(fd) = c.out.as_ref().or(c.master.as_ref()) {
                    add(Token::Out(id.clone(), Stream::Stdout), fd.as_raw_fd());
                }
                if let Some(fd) = &c.err {
                    add(Token::Out(id.clone(), Stream::Stderr), fd.as_raw_fd());
                }
            }
            // SAFETY: `pfds` is a valid array of pollfd of the given length for the call.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    diag!("poll: {e}");
                }
                continue;
            }
            for (t, p) in toks.into_iter().zip(pfds) {
                if p.revents == 0 {
                    continue;
                }
                match t {
                    Token::Signal => self.on_signal(),
                    Token::Listener => self.accept(),
                    Token::Conn(id) => self.on_conn(id),
                    Token::Out(id, s) => self.on_output(&id, s),
                }
            }
            self.conns.retain(|_, c| !c.closed);
        }
    }

    fn on_signal(&mut self) {
        let mut term = false;
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                term = true;
            }
        }
        self.reap();
        if term {
            diag!("terminated by signal: shutting down the sandbox");
            self.shutdown();
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(false).is_err()
                        || sock.set_write_timeout(Some(Duration::from_secs(2))).is_err()
                    {
                        continue;
                    }
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        id,
                        Conn {
                            sock,
                            rbuf: Vec::new(),
                            fds: VecDeque::new(),
                            hello: false,
                            waiting: false,
                            subscribed: false,
                            closed: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    diag!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let mut buf = [0u8; 8192];
        match fdpass::recv_with_fds(c.sock.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => {
                c.closed = true;
                return;
            }
            Ok((n, fds)) => {
                c.rbuf.extend_from_slice(&buf[..n]);
                c.fds.extend(fds);
                if c.rbuf.len() > 1 << 20 {
                    c.closed = true;
                    return;
                }
            }
        }
        self.process_conn(id);
    }

    /// Handles the complete lines buffered on a connection, as long as no answer is pending.
    fn process_conn(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.waiting || c.closed || c.subscribed {
                return;
            }
            let Some(pos) = c.rbuf.iter().position(|&b| b == b'\n') else { return };
            let rest = c.rbuf.split_off(pos + 1);
            let line = std::mem::replace(&mut c.rbuf, rest);
            if !c.hello {
                match decode::<Hello>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(|h| check_version(h.protocol).map_err(|e| e.to_string()))
                {
                    Ok(()) => {
                        c.hello = true;
                        let reply = HelloReply {
                            protocol: PROTOCOL_VERSION,
                            sandbox_id: self.cfg.sandbox_id.clone(),
                            shim_pid: std::process::id() as i32,
                        };
                        send(c, &encode(&reply), &[]);
                    }
                    Err(message) => {
                        send(c, &encode(&Response::Error { message }), &[]);
                        c.closed = true;
                    }
                }
                continue;
            }
            match decode::<Request>(&line) {
                Ok(req) => self.handle(id, req),
                Err(e) => self.reply(id, Response::Error { message: e.to_string() }, vec![]),
            }
        }
    }

    fn reply(&mut self, id: u64, resp: Response, fds: Vec<OwnedFd>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.waiting = false;
            let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            send(c, &encode(&resp), &b);
        }
    }

    fn defer(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.waiting = true;
        }
    }

    /// Answers a deferred request and resumes reading the connection.
    fn complete(&mut self, id: u64, resp: Response, fds: Vec<OwnedFd>) {
        self.reply(id, resp, fds);
        self.process_conn(id);
    }

    fn err(&mut self, id: u64, message: String) {
        self.reply(id, Response::Error { message }, vec![]);
    }

    fn handle(&mut self, conn: u64, req: Request) {
        match req {
            Request::Create(r) => self.create(conn, r),
            Request::Start { id } => match self.start(&id) {
                Ok(()) => self.reply(conn, Response::Ok, vec![]),
                Err(m) => self.err(conn, m),
            },
            Request::Kill { id, signal } => match self.kill(&id, signal) {
                Ok(()) => self.reply(conn, Response::Ok, vec![]),
                Err(m) => self.err(conn, m),
            },
            Request::Delete { id } => match self.delete(&id) {
                Ok(()) => self.reply(conn, Response::Ok, vec![]),
                Err(m) => self.err(conn, m),
            },
            Request::State { id } => match self.containers.get(&id) {
                Some(c) => {
                    let s = c.state.clone();
                    self.reply(conn, Response::State(s), vec![])
                }
                None => self.err(conn, format!("no container {id}")),
            },
            Request::List => {
                let containers = self.containers.values().map(|c| c.state.clone()).collect();
                self.reply(conn, Response::List { containers }, vec![]);
            }
            Request::Wait { id } => match self.containers.get_mut(&id) {
                Some(c) if c.state.status == ContainerStatus::Exited => {
                    let s = c.state.clone();
                    self.reply(conn, Response::State(s), vec![]);
                }
                Some(c) => {
                    c.waiters.push(conn);
                    self.defer(conn);
                }
                None => self.err(conn, format!("no container {id}")),
            },
            Request::Exec(r) => self.exec(conn, r),
            Request::WaitExec { exec_id } => match self.execs.get_mut(&exec_id) {
                Some(e) => {
                    if let Some(exit) = e.exit {
                        self.execs.remove(&exec_id);
                        self.reply(conn, Response::ExecExited { exit }, vec![]);
                    } else {
                        e.waiters.push(conn);
                        self.defer(conn);
                    }
                }
                None => self.err(conn, format!("no exec {exec_id}")),
            },
            Request::Attach { id } => match self.attach(&id) {
                Ok((resp, fds)) => self.reply(conn, resp, fds),
                Err(m) => self.err(conn, m),
            },
            Request::Resize { id, cols, rows } => {
                let r = match self.containers.get(&id).and_then(|c| c.master.as_ref()) {
                    Some(m) => sys::set_winsize(m.as_fd(), cols, rows)
                        .map_err(|e| format!("resize terminal of {id}: {e}")),
                    None => Err(format!("container {id} has no terminal")),
                };
                match r {
                    Ok(()) => self.reply(conn, Response::Ok, vec![]),
                    Err(m) => self.err(conn, m),
                }
            }
            Request::Subscribe => {
                self.reply(conn, Response::Subscribed, vec![]);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subscribed = true;
                }
            }
            Request::Shutdown => {
                self.shutdown();
                self.reply(conn, Response::Ok, vec![]);
            }
        }
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(format!("{id}.json"))
    }

    fn persist(&self, id: &str) {
        if let Some(c) = self.containers.get(id) {
            if let Err(e) = state::write_atomic(&self.state_path(id), &c.state) {
                diag!("persist container {id}: {e}");
            }
        }
    }

    fn broadcast(&mut self, ev: &Event) {
        let line = encode(ev);
        for c in self.conns.values_mut() {
            if c.subscribed && !c.closed {
                send(c, &line, &[]);
            }
        }
    }

    fn create(&mut self, conn: u64, r: CreateRequest) {
        if self.containers.contains_key(&r.id) {
            return self.err(conn, format!("container {} already exists", r.id));
        }
        let res = (|| -> io::Result<(Container, Stdio)> {
            let log = LogWriter::open(&r.log_path, r.log_max_size, r.log_max_files)?;
            let mut stdio = Stdio::default();
            let (mut stdin, mut out, mut err) = (None, None, None);
            if r.tty {
                stdio.console = Some(self.cfg.libcontainer_root.join(format!("{}.console", r.id)));
            } else {
                let (or, ow) = pipe()?;
                let (er, ew) = pipe()?;
                sys::set_nonblocking(or.as_fd())?;
                sys::set_nonblocking(er.as_fd())?;
                stdio.stdout = Some(ow);
                stdio.stderr = Some(ew);
                out = Some(or);
                err = Some(er);
                if r.stdin {
                    let (ir, iw) = pipe()?;
                    stdio.stdin = Some(ir);
                    stdin = Some(iw);
                }
            }
            let state = ContainerState {
                version: STATE_VERSION,
                id: r.id.clone(),
                bundle: r.bundle.clone(),
                status: ContainerStatus::Created,
                pid: None,
                created_at_ns: state::now_ns(),
                started_at_ns: None,
                exit: None,
                log_path: r.log_path.clone(),
                tty: r.tty,
                stdin: r.stdin,
                cgroup_dir: r.cgroup_dir.clone(),
            };
            let c = Container {
                state,
                stdin,
                out,
                err,
                master: None,
                log,
                attachers: Vec::new(),
                waiters: Vec::new(),
            };
            Ok((c, stdio))
        })();
        match res {
            Ok((c, stdio)) => {
                self.containers.insert(r.id.clone(), c);
                let job = Job::Create { id: r.id.clone(), bundle: r.bundle };
                self.queue.push_back(QueuedJob { conn, kind: JobKind::Create(r.id), job, stdio });
                self.defer(conn);
                self.next_job();
            }
            Err(e) => self.err(conn, format!("prepare stdio and log of {}: {e}", r.id)),
        }
    }

    fn exec(&mut self, conn: u64, r: ExecRequest) {
        match self.containers.get(&r.container_id) {
            Some(c) if c.state.status == ContainerStatus::Running => {}
            Some(_) => {
                return self.err(conn, format!("container {} is not running", r.container_id))
            }
            None => return self.err(conn, format!("no container {}", r.container_id)),
        }
        if self.execs.contains_key(&r.exec_id) {
            return self.err(conn, format!("exec {} already exists", r.exec_id));
        }
        let mut stdio = Stdio::default();
        if r.tty {
            stdio.console = Some(self.cfg.libcontainer_root.join(format!("{}.console", r.exec_id)));
        } else {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let need = 2 + usize::from(r.stdin);
            let have = c.fds.len();
            if have < need {
                return self
                    .err(conn, format!("exec {} needs {need} descriptors, got {have}", r.exec_id));
            }
            if r.stdin {
                stdio.stdin = c.fds.pop_front();
            }
            stdio.stdout = c.fds.pop_front();
            stdio.stderr = c.fds.pop_front();
        }
        self.execs.insert(
            r.exec_id.clone(),
            ExecProc {
                container_id: r.container_id.clone(),
                pid: None,
                exit: None,
                waiters: Vec::new(),
            },
        );
        let job = Job::Exec { container_id: r.container_id, process_path: r.process_path };
        self.queue.push_back(QueuedJob { conn, kind: JobKind::Exec(r.exec_id, r.tty), job, stdio });
        self.defer(conn);
        self.next_job();
    }

    fn next_job(&mut self) {
        while self.running.is_none() {
            let Some(q) = self.queue.pop_front() else { return };
            let over = self.cfg.cgroup2_mount_over.clone();
            match child::spawn(q.job, q.stdio, &self.cfg.libcontainer_root, over.as_deref()) {
                Ok((pid, sock)) => {
                    self.running =
                        Some(RunningJob { pid: pid.as_raw(), sock, conn: q.conn, kind: q.kind });
                }
                Err(e) => self.job_failed(q.conn, q.kind, format!("fork libcontainer child: {e}")),
            }
        }
    }

    fn job_failed(&mut self, conn: u64, kind: JobKind, message: String) {
        match kind {
            JobKind::Create(id) => {
                self.containers.remove(&id);
                let _ = std::fs::remove_file(self.state_path(&id));
            }
            JobKind::Exec(eid, _) => {
                self.execs.remove(&eid);
            }
        }
        self.complete(conn, Response::Error { message }, vec![]);
    }

    fn job_done(&mut self, job: RunningJob, code: i32) {
        let mut data = Vec::new();
        let mut fds = Vec::new();
        let _ = job.sock.set_nonblocking(true);
        let mut buf = [0u8; 4096];
        while let Ok((n, f)) = fdpass::recv_with_fds(job.sock.as_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            fds.extend(f);
        }
        let text = String::from_utf8_lossy(&data).trim().to_owned();
        let pid = match text.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => pid,
            None => {
                let msg = match text.strip_prefix("error ") {
                    Some(m) => m.to_owned(),
                    None => format!("libcontainer child exited with status {code} and no result"),
                };
                self.job_failed(job.conn, job.kind, msg);
                self.next_job();
                return;
            }
        };
        match job.kind {
            JobKind::Create(id) => {
                if let Some(c) = self.containers.get_mut(&id) {
                    c.state.pid = Some(pid);
                    if let Some(m) = fds.into_iter().next() {
                        let _ = sys::set_nonblocking(m.as_fd());
                        c.master = Some(m);
                    }
                }
                self.owners.insert(pid, Owner::Init(id.clone()));
                self.persist(&id);
                self.complete(job.conn, Response::Created { pid }, vec![]);
            }
            JobKind::Exec(eid, tty) => {
                if let Some(e) = self.execs.get_mut(&eid) {
                    e.pid = Some(pid);
                }
                self.owners.insert(pid, Owner::Exec(eid));
                let master: Vec<OwnedFd> =
                    if tty { fds.into_iter().take(1).collect() } else { Vec::new() };
                self.complete(job.conn, Response::Exec { pid }, master);
            }
        }
        if let Some((code, sig)) = self.early_exits.remove(&pid) {
            self.process_exited(pid, code, sig);
        }
        self.next_job();
    }

    fn start(&mut self, id: &str) -> Result<(), String> {
        let c = self.containers.get(id).ok_or_else(|| format!("no container {id}"))?;
        if c.state.status != ContainerStatus::Created || c.state.pid.is_none() {
            return Err(format!("container {id} is not created"));
        }
        let root = self.cfg.libcontainer_root.join(id);
        let mut lc = libcontainer::container::Container::load(root)
            .map_err(|e| format!("load container {id}: {e}"))?;
        lc.start().map_err(|e| format!("start container {id}: {e}"))?;
        let pid = {
            let c = self.containers.get_mut(id).expect("checked above");
            c.state.status = ContainerStatus::Running;
            c.state.started_at_ns = Some(state::now_ns());
            c.state.pid.unwrap_or_default()
        };
        self.persist(id);
        self.broadcast(&Event::Started { id: id.to_owned(), pid });
        Ok(())
    }

    fn kill(&mut self, id: &str, signal: i32) -> Result<(), String> {
        let c = self.containers.get(id).ok_or_else(|| format!("no container {id}"))?;
        let (Some(pid), false) = (c.state.pid, c.state.status == ContainerStatus::Exited) else {
            return Err(format!("container {id} is not running"));
        };
        let sig = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
        // The pid is ours until we reap it, so it cannot have been reused.
        kill(Pid::from_raw(pid), sig).map_err(|e| format!("kill container {id} with {sig}: {e}"))
    }

    fn delete(&mut self, id: &str) -> Result<(), String> {
        let c = self.containers.get(id).ok_or_else(|| format!("no container {id}"))?;
        if c.state.status != ContainerStatus::Exited && c.state.pid.is_some() {
            return Err(format!("container {id} has not exited"));
        }
        let cg = c.state.cgroup_dir.clone();
        let lc_dir = self.cfg.libcontainer_root.join(id);
        match std::fs::remove_dir_all(&lc_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", lc_dir.display())),
        }
        if let Some(cg) = cg {
            sys::remove_cgroup(&cg).map_err(|e| format!("remove cgroup {}: {e}", cg.display()))?;
        }
        let _ = std::fs::remove_file(self.state_path(id));
        self.containers.remove(id);
        self.execs.retain(|_, e| e.container_id != id);
        Ok(())
    }

    fn attach(&mut self, id: &str) -> Result<(Response, Vec<OwnedFd>), String> {
        let c = self.containers.get_mut(id).ok_or_else(|| format!("no container {id}"))?;
        if c.state.status == ContainerStatus::Exited {
            return Err(format!("container {id} has exited"));
        }
        let io = |e: io::Error| format!("attach to {id}: {e}");
        let tty = c.state.tty;
        let mut fds = Vec::new();
        let (or, ow) = pipe().map_err(io)?;
        sys::set_nonblocking(ow.as_fd()).map_err(io)?;
        fds.push(or);
        let mut err = None;
        if !tty {
            let (er, ew) = pipe().map_err(io)?;
            sys::set_nonblocking(ew.as_fd()).map_err(io)?;
            fds.push(er);
            err = Some(ew);
        }
        let input = if tty { c.master.as_ref() } else { c.stdin.as_ref() };
        let stdin = match input {
            Some(fd) => {
                fds.push(fd.try_clone().map_err(io)?);
                true
            }
            None => false,
        };
        c.attachers.push(Attacher { out: ow, err });
        Ok((Response::Attach { tty, stdin }, fds))
    }

    fn on_output(&mut self, id: &str, stream: Stream) {
        let Some(c) = self.containers.get_mut(id) else { return };
        drain(c, stream, false);
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(ws) => {
                    if let Some((pid, code, sig)) = decode_status(ws) {
                        self.exited(pid, code, sig);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    diag!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn exited(&mut self, pid: i32, code: i32, sig: Option<i32>) {
        if self.running.as_ref().is_some_and(|j| j.pid == pid) {
            let job = self.running.take().expect("checked above");
            self.job_done(job, code);
            return;
        }
        if self.owners.contains_key(&pid) {
            self.process_exited(pid, code, sig);
        } else if self.running.is_some() || !self.queue.is_empty() {
            // A process whose pid the libcontainer child has not reported yet (a fast exec).
            if self.early_exits.len() < 1024 {
                self.early_exits.insert(pid, (code, sig));
            }
        }
    }

    fn process_exited(&mut self, pid: i32, code: i32, sig: Option<i32>) {
        let Some(owner) = self.owners.remove(&pid) else { return };
        match owner {
            Owner::Init(id) => {
                let Some(c) = self.containers.get_mut(&id) else { return };
                // Whatever the process wrote before it died is in the pipe: log it first, so a
                // reader who sees the exit also sees the output.
                if c.out.is_some() || c.master.is_some() {
                    drain(c, Stream::Stdout, true);
                }
                if c.err.is_some() {
                    drain(c, Stream::Stderr, true);
                }
                let oom = c.state.cgroup_dir.as_deref().map(sys::oom_kills).unwrap_or(0) > 0;
                let exit = ExitStatus {
                    code,
                    signal: sig,
                    oom_killed: oom,
                    finished_at_ns: state::now_ns(),
                };
                c.state.status = ContainerStatus::Exited;
                c.state.exit = Some(exit);
                c.stdin = None;
                let waiters = std::mem::take(&mut c.waiters);
                let st = c.state.clone();
                self.persist(&id);
                if oom {
                    self.broadcast(&Event::OomKilled { id: id.clone() });
                }
                self.broadcast(&Event::Exited { id: id.clone(), exit });
                for w in waiters {
                    self.complete(w, Response::State(st.clone()), vec![]);
                }
            }
            Owner::Exec(eid) => {
                let Some(e) = self.execs.get_mut(&eid) else { return };
                let exit = ExitStatus {
                    code,
                    signal: sig,
                    oom_killed: false,
                    finished_at_ns: state::now_ns(),
                };
                e.exit = Some(exit);
                let waiters = std::mem::take(&mut e.waiters);
                let cid = e.container_id.clone();
                if !waiters.is_empty() {
                    self.execs.remove(&eid);
                }
                self.broadcast(&Event::ExecExited { container_id: cid, exec_id: eid, exit });
                for w in waiters {
                    self.complete(w, Response::ExecExited { exit }, vec![]);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        for c in self.containers.values() {
            if let (Some(pid), true) = (c.state.pid, c.state.status != ContainerStatus::Exited) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for e in self.execs.values() {
            if let (Some(pid), None) = (e.pid, e.exit) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if self.netns_pinned {
            if let Some(p) = &self.cfg.netns_path {
                if let Err(e) = sys::unpin_netns(p) {
                    diag!("unpin {}: {e}", p.display());
                }
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.exit_code = Some(0);
    }
}

/// Reads what is available from one output stream of a container, logs it and copies it to
/// attached clients. At end of stream (or when `final_drain` and nothing is left) the stream's
/// unfinished line is flushed and, once every stream is closed, attached clients see EOF.
fn drain(c: &mut Container, stream: Stream, final_drain: bool) {
    let mut buf = vec![0u8; 65536];
    loop {
        let fd = match stream {
            Stream::Stdout => c.out.as_ref().or(c.master.as_ref()),
            Stream::Stderr => c.err.as_ref(),
        };
        let Some(fd) = fd else { return };
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) => {
                // EIO: the terminal's last process is gone.
                close_stream(c, stream);
                return;
            }
            Ok(n) => {
                if let Err(e) = c.log.write(stream, &buf[..n]) {
                    diag!("write log {}: {e}", c.log.path().display());
                }
                let data = &buf[..n];
                c.attachers.retain(|a| {
                    let target = match stream {
                        Stream::Stdout => Some(&a.out),
                        Stream::Stderr => a.err.as_ref(),
                    };
                    match target {
                        Some(fd) => !matches!(nix::unistd::write(fd, data), Err(Errno::EPIPE)),
                        None => true,
                    }
                });
                if !final_drain && n < buf.len() {
                    return;
                }
            }
            Err(Errno::EAGAIN) => return,
            Err(Errno::EINTR) => {}
            Err(e) => {
                diag!("read output of {}: {e}", c.state.id);
                close_stream(c, stream);
                return;
            }
        }
    }
}

fn close_stream(c: &mut Container, stream: Stream) {
    if let Err(e) = c.log.finish(stream) {
        diag!("write log {}: {e}", c.log.path().display());
    }
    match stream {
        Stream::Stdout => {
            c.out = None;
            // Keep the master for resize and attach-stdin until the container is removed, but
            // stop polling it: it is only read through `out` or, without pipes, here.
            if c.master.is_some() && c.out.is_none() {
                c.master = None;
            }
        }
        Stream::Stderr => c.err = None,
    }
    if c.out.is_none() && c.err.is_none() && c.master.is_none() {
        c.attachers.clear();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn send(c: &mut Conn, data: &[u8], fds: &[BorrowedFd<'_>]) {
    if c.closed {
        return;
    }
    let mut off = match fdpass::send_with_fds(c.sock.as_fd(), data, fds) {
        Ok(n) => n,
        Err(_) => {
            c.closed = true;
            return;
        }
    };
    while off < data.len() {
        match c.sock.write(&data[off..]) {
            Ok(n) => off += n,
            Err(_) => {
                c.closed = true;
                return;
            }
        }
    }
}
