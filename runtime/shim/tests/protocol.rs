//! The shim's protocol, served by the real binary, without root: a shim with the host's
//! namespaces and no cgroup needs no privilege. Containers need root and are covered by the
//! privileged tests in `tests/tests/runtime.rs`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;

use keelson_shim_proto::state::{self, ShimState};
use keelson_shim_proto::{
    decode, encode, Hello, HelloReply, Request, Response, ShimConfig, PROTOCOL_VERSION,
};

struct Shim {
    _dir: tempfile::TempDir,
    cfg: ShimConfig,
    pid: i32,
}

impl Drop for Shim {
    fn drop(&mut self) {
        // SAFETY: kill(2) touches no memory; the pid is the shim this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

fn start() -> Shim {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ShimConfig {
        sandbox_id: "proto1".into(),
        socket: dir.path().join("s.sock"),
        state_dir: dir.path().join("state"),
        libcontainer_root: dir.path().join("lc"),
        netns_path: None,
        hostname: "unused".into(),
        new_ipc: false,
        cgroup_dir: None,
        cgroup2_mount_over: None,
        log_file: Some(dir.path().join("shim.log")),
        sysctls: Default::default(),
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let wfd = w.as_raw_fd();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keelson-shim"));
    cmd.arg(serde_json::to_string(&cfg).expect("serialize"));
    // SAFETY: only dup2, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn shim");
    drop(w);
    assert!(child.wait().expect("wait").success(), "the shim's first process exits 0");
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r)).read_line(&mut line).expect("readiness");
    let pid: i32 = line
        .trim()
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("readiness line {line:?}"));
    Shim { _dir: dir, cfg, pid }
}

fn connect(path: &Path, protocol: u32) -> (UnixStream, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(path).expect("connect");
    s.write_all(&encode(&Hello { protocol })).expect("hello");
    let r = BufReader::new(s.try_clone().expect("clone"));
    (s, r)
}

fn line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("read");
    l
}

fn call(path: &Path, req: &Request) -> Response {
    let (mut s, mut r) = connect(path, PROTOCOL_VERSION);
    s.write_all(&encode(req)).expect("request");
    let _hello: HelloReply = decode(line(&mut r).as_bytes()).expect("hello reply");
    decode(line(&mut r).as_bytes()).expect("response")
}

#[test]
fn shim_answers_hello_with_its_identity_and_records_itself() {
    let shim = start();
    let (_s, mut r) = connect(&shim.cfg.socket, PROTOCOL_VERSION);
    let h: HelloReply = decode(line(&mut r).as_bytes()).expect("hello reply");
    assert_eq!(
        h,
        HelloReply { protocol: PROTOCOL_VERSION, sandbox_id: "proto1".into(), shim_pid: shim.pid }
    );
    let st: ShimState = state::read(&shim.cfg.state_dir.join("shim.json")).expect("shim.json");
    assert_eq!((st.pid, st.netns_path), (shim.pid, None));
}

#[test]
fn shim_refuses_another_protocol_version() {
    let shim = start();
    let (_s, mut r) = connect(&shim.cfg.socket, PROTOCOL_VERSION + 1);
    let resp: Response = decode(line(&mut r).as_bytes()).expect("response");
    assert!(
        matches!(resp, Response::Error { ref message } if message.contains("not supported")),
        "{resp:?}"
    );
    assert_eq!(line(&mut r), "", "the shim closes the connection");
}

#[test]
fn requests_on_unknown_containers_are_errors_and_the_list_starts_empty() {
    let shim = start();
    assert_eq!(call(&shim.cfg.socket, &Request::List), Response::List { containers: vec![] });
    for req in [
        Request::Start { id: "nope".into() },
        Request::Kill { id: "nope".into(), signal: 15 },
        Request::Delete { id: "nope".into() },
        Request::Wait { id: "nope".into() },
        Request::Attach { id: "nope".into() },
        Request::WaitExec { exec_id: "nope".into() },
    ] {
        let resp = call(&shim.cfg.socket, &req);
        assert!(matches!(resp, Response::Error { .. }), "{req:?} -> {resp:?}");
    }
    // A malformed line is answered, not fatal.
    let (mut s, mut r) = connect(&shim.cfg.socket, PROTOCOL_VERSION);
    s.write_all(b"{\"op\":\"fly\"}\n").expect("write");
    line(&mut r);
    assert!(matches!(decode::<Response>(line(&mut r).as_bytes()), Ok(Response::Error { .. })));
    assert_eq!(call(&shim.cfg.socket, &Request::List), Response::List { containers: vec![] });
}

#[test]
fn several_requests_share_one_connection_in_order() {
    let shim = start();
    let (mut s, mut r) = connect(&shim.cfg.socket, PROTOCOL_VERSION);
    let mut data = encode(&Request::List);
    data.extend(encode(&Request::State { id: "x".into() }));
    data.extend(encode(&Request::List));
    s.write_all(&data).expect("write");
    line(&mut r);
    let a: Response = decode(line(&mut r).as_bytes()).expect("1");
    let b: Response = decode(line(&mut r).as_bytes()).expect("2");
    let c: Response = decode(line(&mut r).as_bytes()).expect("3");
    assert!(matches!(a, Response::List { .. }));
    assert!(matches!(b, Response::Error { .. }));
    assert!(matches!(c, Response::List { .. }));
}

#[test]
fn shutdown_answers_then_exits_and_removes_the_socket() {
    let shim = start();
    let (mut sub, mut subr) = connect(&shim.cfg.socket, PROTOCOL_VERSION);
    sub.write_all(&encode(&Request::Subscribe)).expect("subscribe");
    line(&mut subr);
    assert_eq!(
        decode::<Response>(line(&mut subr).as_bytes()).expect("subscribed"),
        Response::Subscribed
    );
    assert_eq!(call(&shim.cfg.socket, &Request::Shutdown), Response::Ok);
    // The event stream ends when the shim exits.
    assert_eq!(line(&mut subr), "");
    assert!(!shim.cfg.socket.exists());
}

#[test]
fn shim_without_a_readiness_pipe_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson-shim"))
        .arg("{}")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readiness pipe"));
}
