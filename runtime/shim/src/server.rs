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
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::child::{self, Job, Stdio};
use crate::{diag, sys};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Signal,
    Inotify,
    Listener,
    Conn(u64),
    Out(String, Stream),
    /// Input from an attached client, to be copied to the container's stdin.
    AttachIn(String, u64),
    /// The container's stdin can take the bytes waiting for it.
    StdinOut(String),
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
    id: u64,
    out: OwnedFd,
    err: Option<OwnedFd>,
    /// The read end of the client's stdin pipe (non-tty containers with stdin).
    input: Option<OwnedFd>,
}

struct Container {
    state: ContainerState,
    /// `oom_kill` of the container's cgroup when last looked at.
    oom_kills: u64,
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    master: Option<OwnedFd>,
    /// Bytes from attached clients the container's stdin has not taken yet.
    stdin_pending: Vec<u8>,
    stdin_once: bool,
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
    /// Watches the containers' `memory.events` (OOM kills while they run).
    inotify: Option<Inotify>,
    oom_watches: HashMap<WatchDescriptor, String>,
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
            inotify: Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok(),
            oom_watches: HashMap::new(),
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
            let mut add_ev = |t: Token, fd: RawFd, events: libc::c_short| {
                toks.push(t);
                pfds.push(libc::pollfd { fd, events, revents: 0 });
            };

            const IN: libc::c_short = libc::POLLIN;
            add_ev(Token::Signal, self.sigfd.as_fd().as_raw_fd(), IN);
            add_ev(Token::Listener, self.listener.as_raw_fd(), IN);
            if let Some(i) = &self.inotify {
                add_ev(Token::Inotify, i.as_fd().as_raw_fd(), IN);
            }
            for (id, c) in &self.conns {
                add_ev(Token::Conn(*id), c.sock.as_raw_fd(), IN);
            }
            for (id, c) in &self.containers {
                if let Some(fd) = c.out.as_ref().or(c.master.as_ref()) {
                    add_ev(Token::Out(id.clone(), Stream::Stdout), fd.as_raw_fd(), IN);
                }
                if let Some(fd) = &c.err {
                    add_ev(Token::Out(id.clone(), Stream::Stderr), fd.as_raw_fd(), IN);
                }
                match &c.stdin {
                    // Back-pressure: read no more client input until the container took the
                    // bytes already waiting.
                    Some(fd) if !c.stdin_pending.is_empty() => {
                        add_ev(Token::StdinOut(id.clone()), fd.as_raw_fd(), libc::POLLOUT)
                    }
                    _ => {
                        for a in &c.attachers {
                            if let Some(fd) = &a.input {
                                add_ev(Token::AttachIn(id.clone(), a.id), fd.as_raw_fd(), IN);
                            }
                        }
                    }
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
                    Token::Inotify => self.on_inotify(),
                    Token::Listener => self.accept(),
                    Token::Conn(id) => self.on_conn(id),
                    Token::Out(id, s) => self.on_output(&id, s),
                    Token::AttachIn(id, a) => self.on_attach_input(&id, a),
                    Token::StdinOut(id) => self.flush_stdin(&id),
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
                    sys::set_nonblocking(iw.as_fd())?;
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
                oom_kills: 0,
                stdin,
                out,
                err,
                master: None,
                stdin_pending: Vec::new(),
                stdin_once: r.stdin_once,
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
                self.watch_oom(&id);
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
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            return Err(format!("invalid signal {signal}"));
        }
        // The pid is ours until we reap it, so it cannot have been reused. Raw kill(2): nix's
        // Signal has no real-time signals.
        // SAFETY: kill(2) with a checked signal number touches no memory.
        if unsafe { libc::kill(pid, signal) } < 0 {
            return Err(format!(
                "kill container {id} with signal {signal}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(())
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
        if let Some(ino) = &self.inotify {
            let wds: Vec<WatchDescriptor> = self
                .oom_watches
                .iter()
                .filter(|(_, c)| c.as_str() == id)
                .map(|(w, _)| *w)
                .collect();
            for wd in wds {
                let _ = ino.rm_watch(wd);
                self.oom_watches.remove(&wd);
            }
        }
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
        // A terminal's input is its master, shared; a stdin pipe is fed through a pipe of the
        // attacher's own, so that the shim sees the client go away (`stdinOnce`).
        let mut input = None;
        let stdin = if tty {
            match &c.master {
                Some(m) => {
                    fds.push(m.try_clone().map_err(io)?);
                    true
                }
                None => false,
            }
        } else if c.stdin.is_some() {
            let (ir, iw) = pipe().map_err(io)?;
            sys::set_nonblocking(ir.as_fd()).map_err(io)?;
            fds.push(iw);
            input = Some(ir);
            true
        } else {
            false
        };
        let aid = self.next_conn;
        self.next_conn += 1;
        c.attachers.push(Attacher { id: aid, out: ow, err, input });
        Ok((Response::Attach { tty, stdin }, fds))
    }

    /// Copies an attached client's input to the container's stdin. At the client's end of
    /// input, a `stdinOnce` container's stdin is closed.
    fn on_attach_input(&mut self, id: &str, attacher: u64) {
        let Some(c) = self.containers.get_mut(id) else { return };
        let Some(a) = c.attachers.iter_mut().find(|a| a.id == attacher) else { return };
        let Some(fd) = &a.input else { return };
        let mut buf = [0u8; 65536];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) | Err(Errno::EBADF) => {
                a.input = None;
                if c.stdin_once {
                    c.stdin = None;
                    c.stdin_pending.clear();
                    for other in &mut c.attachers {
                        other.input = None;
                    }
                }
            }
            Ok(n) => {
                c.stdin_pending.extend_from_slice(&buf[..n]);
                self.flush_stdin(id);
            }
            Err(_) => {}
        }
    }

    /// Writes what the container's stdin takes of the pending input.
    fn flush_stdin(&mut self, id: &str) {
        let Some(c) = self.containers.get_mut(id) else { return };
        let Some(fd) = &c.stdin else {
            c.stdin_pending.clear();
            return;
        };
        while !c.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &c.stdin_pending) {
                Ok(n) => {
                    c.stdin_pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin.
                    c.stdin = None;
                    c.stdin_pending.clear();
                    return;
                }
            }
        }
    }

    /// Starts watching the container's `memory.events` (present only with the memory
    /// controller, so not on hybrid hosts).
    fn watch_oom(&mut self, id: &str) {
        let (Some(ino), Some(c)) = (&self.inotify, self.containers.get_mut(id)) else { return };
        let Some(dir) = c.state.cgroup_dir.clone() else { return };
        let events = dir.join("memory.events");
        if !events.exists() {
            return;
        }
        c.oom_kills = sys::oom_kills(&dir);
        match ino.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                self.oom_watches.insert(wd, id.to_owned());
            }
            Err(e) => diag!("watch {}: {e}", events.display()),
        }
    }

    fn on_inotify(&mut self) {
        let Some(ino) = &self.inotify else { return };
        let Ok(events) = ino.read_events() else { return };
        let mut ids: Vec<String> =
            events.iter().filter_map(|e| self.oom_watches.get(&e.wd).cloned()).collect();
        ids.dedup();
        for id in ids {
            let Some(c) = self.containers.get_mut(&id) else { continue };
            let Some(dir) = &c.state.cgroup_dir else { continue };
            let now = sys::oom_kills(dir);
            if now > c.oom_kills {
                c.oom_kills = now;
                self.broadcast(&Event::OomKilled { id });
            }
        }
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
                let kills = c.state.cgroup_dir.as_deref().map(sys::oom_kills).unwrap_or(0);
                let oom = kills > 0;
                let new_oom = kills > c.oom_kills;
                c.oom_kills = kills;
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
                if new_oom {
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
