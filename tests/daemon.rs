//! Daemon mode (`-accept`) end to end: the documentation's daemon line, concurrency and sequential load, reaping,
//! descriptor hygiene, EMFILE back-off, -maxconn, SIGHUP reload, SIGTERM, and the relay's fault cases. Each test
//! starts its own daemon on a free loopback port and stops it by PID.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

const MIB: usize = 1024 * 1024;

impl Daemon {
    fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The system call the parent is blocked in and its first two arguments, from /proc (None while it runs).
    fn blocked_in(&self) -> Option<[u64; 3]> {
        let call = std::fs::read_to_string(format!("/proc/{}/syscall", self.pid())).unwrap();
        let mut fields = call.split_whitespace().map(|field| {
            let digits = field.trim_start_matches("0x");
            let radix = if digits.len() < field.len() { 16 } else { 10 };
            u64::from_str_radix(digits, radix).ok()
        });
        Some([fields.next()??, fields.next()??, fields.next()??])
    }

    fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        wait_with_timeout(&mut self.child, Duration::from_secs(10))
    }
}

fn wait_for_no_children(pid: u32) -> Vec<(u32, char)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let children = children_of(pid);
        if children.is_empty() || Instant::now() >= deadline {
            return children;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Setup {
    /// The documentation's line: `sslwrap -cert server.pem -port P -accept L`, plus extras.
    fn daemon(&self, backend_port: u16, extra: &[&str]) -> Daemon {
        Daemon::start(
            &as_strs(&self.legacy_line(backend_port, extra)),
            &self.syslog,
        )
    }
}

/// Reads exactly 1 MiB, then answers with its digest followed by 1 MiB of its own, and closes.
fn digest_then_send(mut stream: TcpStream) {
    let mut received = vec![0u8; MIB];
    if stream.read_exact(&mut received).is_err() {
        return;
    }
    let _ = stream.write_all(sha256_hex(&received).as_bytes());
    let _ = stream.write_all(&pattern(MIB, 7));
}

fn one_mib_each_way(port: u16, seed: u64) -> Result<(), String> {
    let mut client = try_tls(port, |_| {})?;
    let data = pattern(MIB, seed);
    client.write_all(&data).map_err(|e| e.to_string())?;
    let reply = read_to_close_notify(&mut client)?;
    if reply.len() != 64 + MIB
        || reply[..64] != *sha256_hex(&data).as_bytes()
        || reply[64..] != pattern(MIB, 7)[..]
    {
        return Err(format!("wrong reply of {} bytes", reply.len()));
    }
    Ok(())
}

#[test]
fn two_hundred_concurrent_sessions_then_no_zombie_and_no_leaked_descriptor() {
    let s = setup("concurrent");
    let daemon = s.daemon(backend(digest_then_send), &[]);
    let descriptors_before = daemon.open_descriptors();
    let port = daemon.port;
    let clients: Vec<_> = (0..200)
        .map(|n| std::thread::spawn(move || one_mib_each_way(port, n)))
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 200 sessions failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        wait_for_no_children(daemon.pid()),
        vec![],
        "children left (zombies show state Z)"
    );
    assert_eq!(daemon.open_descriptors(), descriptors_before);
    assert_eq!(daemon.stop().and_then(|status| status.code()), Some(0));
}

#[test]
fn five_thousand_sequential_sessions() {
    let s = setup("sequential");
    let daemon = s.daemon(backend(echo), &[]);
    let descriptors_before = daemon.open_descriptors();
    let connector = connector(|_| {});
    for n in 0..5000u32 {
        let mut config = connector.configure().unwrap();
        config.set_verify_hostname(false);
        let mut client = config
            .connect("localhost", tcp(daemon.port))
            .unwrap_or_else(|e| panic!("session {n}: {e}"));
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        client
            .read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("session {n}: {e}"));
        assert_eq!(&byte, b"x");
    }
    assert_eq!(wait_for_no_children(daemon.pid()), vec![]);
    assert_eq!(daemon.open_descriptors(), descriptors_before);
}

#[test]
fn out_of_descriptors_does_not_spin_and_recovers() {
    let s = setup("emfile");
    let daemon = s.daemon(backend(echo), &[]);
    // Below every descriptor already open: each accept must now fail with EMFILE.
    let limit = "--nofile=3:";
    let pid = daemon.pid().to_string();
    assert!(
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, limit])
            .status()
            .unwrap()
            .success()
    );
    let flood: Vec<TcpStream> = (0..50).map(|_| tcp(daemon.port)).collect();
    let mut syslog = s.syslog;
    syslog.expect("accept failed: Too many open files; pausing new connections");
    // A paused daemon sleeps in poll on its signal descriptor alone; one spinning on EMFILE keeps the listener in
    // its poll set, or never sleeps at all.
    const POLL: u64 = 7; // x86-64 system call numbers
    const PPOLL: u64 = 271;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let call = daemon.blocked_in();
        if matches!(call, Some([POLL | PPOLL, _, 1])) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never paused with the listener out of its poll set (last seen in {call:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(flood);
    let raised = "--nofile=1024:";
    assert!(
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, raised])
            .status()
            .unwrap()
            .success()
    );
    let mut client =
        try_tls(daemon.port, |_| {}).expect("served again once descriptors are available");
    client.write_all(b"back").unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"back");
}

/// Backend connections of the -maxconn test open right now.
static OPEN_BACKEND_CONNECTIONS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

#[test]
fn maxconn_limits_children_and_still_serves_everyone() {
    /// Echoes once five connections are open at the same time (or after a bound), so sessions overlap.
    fn echo_when_five_are_open(mut stream: TcpStream) {
        let (open, changed) = &OPEN_BACKEND_CONNECTIONS;
        *open.lock().unwrap() += 1;
        changed.notify_all();
        let mut buffer = [0u8; 16];
        if let Ok(count) = stream.read(&mut buffer) {
            let guard = open.lock().unwrap();
            let _ = changed.wait_timeout_while(guard, Duration::from_secs(10), |open| *open < 5);
            let _ = stream.write_all(&buffer[..count]);
        }
        *open.lock().unwrap() -= 1;
        changed.notify_all();
    }
    let mut s = setup("maxconn");
    let daemon = s.daemon(
        backend(echo_when_five_are_open),
        &["-maxconn", "5", "-maxconn_per_source", "5", "-debug"],
    );
    let pid = daemon.pid();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut most = 0;
        while !watching.load(std::sync::atomic::Ordering::SeqCst) {
            most = most.max(children_of(pid).len());
            std::thread::sleep(Duration::from_millis(5));
        }
        most
    });
    let port = daemon.port;
    let clients: Vec<_> = (0..20)
        .map(|n| {
            std::thread::spawn(move || {
                let mut client = try_tls(port, |_| {})?;
                let message = format!("client {n:02}");
                client
                    .write_all(message.as_bytes())
                    .map_err(|e| e.to_string())?;
                let mut echoed = vec![0u8; message.len()];
                client.read_exact(&mut echoed).map_err(|e| e.to_string())?;
                if echoed == message.as_bytes() {
                    Ok(())
                } else {
                    Err("wrong echo".to_string())
                }
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = watcher.join().unwrap();
    assert!(
        results.iter().all(Result::is_ok),
        "{results:?} {:#?}",
        s.syslog.settle()
    );
    assert!(most <= 5, "{most} children at once with -maxconn 5");
    assert!(
        most >= 2,
        "the watcher never saw concurrent children ({most})"
    );
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_is_broken() {
    let mut s = setup("sighup");
    let daemon = s.daemon(backend(echo), &[]);
    assert_eq!(server_common_name(daemon.port), "localhost");
    write_identity(
        &s.pki.server_pem,
        &issue("replaced", Some(&s.pki.ca), false),
    );
    daemon.signal("HUP");
    s.syslog.expect("certificate, key and CA files reloaded");
    assert_eq!(server_common_name(daemon.port), "replaced");
    std::fs::write(&s.pki.server_pem, b"not a certificate").unwrap();
    daemon.signal("HUP");
    let line = s
        .syslog
        .expect("reload failed, keeping the previous certificate");
    assert!(line.contains(s.pki.server_pem.to_str().unwrap()), "{line}");
    assert_eq!(server_common_name(daemon.port), "replaced");
    let _ = &s.dir;
}

/// The backend of the SIGTERM test: it reports the request, then replies only when the test says so.
static REQUEST_SEEN: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>> =
    std::sync::Mutex::new(None);
static REPLY_NOW: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
    std::sync::Mutex::new(None);

#[test]
fn sigterm_exits_0_and_the_session_in_flight_completes() {
    fn reply_when_told(mut stream: TcpStream) {
        let mut buffer = [0u8; 4];
        if stream.read_exact(&mut buffer).is_ok() {
            if let Some(seen) = REQUEST_SEEN.lock().unwrap().take() {
                let _ = seen.send(());
            }
            let go = REPLY_NOW.lock().unwrap().take();
            if go.is_some_and(|go| go.recv_timeout(IO_TIMEOUT).is_ok()) {
                let _ = stream.write_all(b"finished");
            }
        }
    }
    let (seen, request_seen) = std::sync::mpsc::channel();
    let (reply_now, go) = std::sync::mpsc::channel();
    *REQUEST_SEEN.lock().unwrap() = Some(seen);
    *REPLY_NOW.lock().unwrap() = Some(go);
    let s = setup("sigterm");
    let daemon = s.daemon(backend(reply_when_told), &[]);
    let port = daemon.port;
    let mut client = tls(port);
    client.write_all(b"work").unwrap();
    request_seen
        .recv_timeout(IO_TIMEOUT)
        .expect("the request reached the backend");
    assert_eq!(daemon.stop().and_then(|status| status.code()), Some(0));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listening socket is closed"
    );
    reply_now.send(()).unwrap();
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"finished");
}

#[test]
fn client_reset_mid_stream_does_not_disturb_the_next_client() {
    fn source(mut stream: TcpStream) {
        let chunk = pattern(MIB, 5);
        for _ in 0..64 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    }
    let mut s = setup("clientreset");
    let daemon = s.daemon(backend(source), &[]);
    let mut client = tls(daemon.port);
    let mut some = vec![0u8; 100_000];
    client.read_exact(&mut some).unwrap();
    // Closing a socket with unread data in its receive buffer makes the kernel send a reset: wait until some is
    // there (the backend keeps sending).
    let mut unread = [0u8; 1];
    assert_eq!(client.get_ref().peek(&mut unread).unwrap(), 1);
    drop(client);
    let line = s
        .syslog
        .expect("session ended: client: Connection reset by peer");
    assert!(
        line.starts_with("<13>sslwrap["),
        "a client reset is a notice, not an error: {line}"
    );
    let mut next = tls(daemon.port);
    next.read_exact(&mut some).unwrap();
    assert_eq!(some[..], pattern(MIB, 5)[..100_000]);
}

#[test]
fn backend_reset_mid_stream_ends_the_session_without_close_notify() {
    /// Sends 200000 bytes, and once the client has them all (the test says so) closes with the client's bytes
    /// unread, which makes the kernel send a reset instead of a FIN.
    fn reset_after_some(mut stream: TcpStream) {
        let _ = stream.write_all(&pattern(200_000, 6));
        let mut unread = [0u8; 1];
        let _ = stream.peek(&mut unread);
        if let Some(delivered) = RESET_NOW.lock().unwrap().take() {
            let _ = delivered.recv_timeout(IO_TIMEOUT);
        }
    }
    let (all_delivered, delivered) = std::sync::mpsc::channel();
    *RESET_NOW.lock().unwrap() = Some(delivered);
    let mut s = setup("backendreset");
    let daemon = s.daemon(backend(reset_after_some), &[]);
    let mut client = tls(daemon.port);
    client.write_all(b"never read by the backend").unwrap();
    let mut first = vec![0u8; 200_000];
    client.read_exact(&mut first).unwrap();
    assert!(first == pattern(200_000, 6), "the data arrived altered");
    all_delivered.send(()).unwrap();
    let outcome = read_to_close_notify(&mut client);
    let error = outcome.expect_err("a cut-off transfer must not end with close_notify");
    assert!(error.contains("after 0 bytes"), "{error}");
    let line = s.syslog.expect("session ended: backend:");
    assert!(line.contains("Connection reset by peer"), "{line}");
    assert_eq!(
        tls(daemon.port).ssl().version_str(),
        "TLSv1.3",
        "the daemon still serves"
    );
}

/// Told by the backend-reset test when its client has received everything, so the backend may reset.
static RESET_NOW: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
    std::sync::Mutex::new(None);

#[test]
fn idle_timeout_closes_a_session_whose_backend_never_answers() {
    fn silent(mut stream: TcpStream) {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    let mut s = setup("idle");
    let daemon = s.daemon(backend(silent), &["-timeout", "1"]);
    let mut client = tls(daemon.port);
    client.write_all(b"anyone there?").unwrap();
    let outcome = read_to_close_notify(&mut client);
    assert!(
        outcome.is_err(),
        "an idle timeout is not a clean end: {outcome:?}"
    );
    s.syslog.expect("idle for 1 s, closed");
}

#[test]
fn slowloris_connections_are_dropped_at_the_handshake_deadline_while_others_are_served() {
    let mut s = setup("slowloris");
    let daemon = s.daemon(backend(echo), &["-handshake_timeout", "2"]);
    let silent: Vec<TcpStream> = (0..50).map(|_| tcp(daemon.port)).collect();
    let mut client = tls(daemon.port);
    client.write_all(b"served").unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"served");
    for mut connection in silent {
        let mut rest = Vec::new();
        let read = connection.read_to_end(&mut rest);
        assert!(
            read.is_ok() && rest.is_empty(),
            "silent connection not closed cleanly: {read:?}"
        );
    }
    s.syslog.expect("failed: not completed within 2 s");
}

/// Told when the flooding backend of the back-pressure test first finds sslwrap not taking more.
static HELD_BACK: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>> =
    std::sync::Mutex::new(None);

#[test]
fn a_slow_reader_gets_back_pressure_not_unbounded_memory() {
    /// Sends 256 MiB without blocking, and reports the first time sslwrap stops taking it (back pressure).
    fn flood(mut stream: TcpStream) {
        let chunk = pattern(MIB, 9);
        stream.set_nonblocking(true).unwrap();
        let mut reported = false;
        for _ in 0..256 {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                match stream.write(rest) {
                    Ok(count) => rest = &rest[count..],
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        if !reported {
                            reported = true;
                            if let Some(held_back) = HELD_BACK.lock().unwrap().take() {
                                let _ = held_back.send(());
                            }
                        }
                        stream.set_nonblocking(false).unwrap();
                        let written = stream.write(rest);
                        stream.set_nonblocking(true).unwrap();
                        match written {
                            Ok(count) => rest = &rest[count..],
                            Err(_) => return,
                        }
                    }
                    Err(_) => return,
                }
            }
        }
    }
    let (held_back, backend_held_back) = std::sync::mpsc::channel();
    *HELD_BACK.lock().unwrap() = Some(held_back);
    let s = setup("backpressure");
    let daemon = s.daemon(backend(flood), &[]);
    let mut client = tls(daemon.port);
    let mut first = [0u8; 1000];
    client.read_exact(&mut first).unwrap();
    // Without back pressure sslwrap would take all 256 MiB while the client reads nothing.
    backend_held_back
        .recv_timeout(IO_TIMEOUT)
        .expect("sslwrap never stopped taking data from the backend");
    let (child, _) = children_of(daemon.pid())[0];
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .map(|value| value.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap();
    assert!(
        rss_kib < 32 * 1024,
        "the session process holds {rss_kib} KiB while its client does not read"
    );
    let mut received = first.len();
    let mut buffer = vec![0u8; 65536];
    while received < 256 * MIB {
        received += client.read(&mut buffer).unwrap();
    }
    assert_eq!(received, 256 * MIB);
}

#[test]
fn ipv6_listen_address() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return;
    }
    let s = setup("listen6");
    let backend_port = backend(echo).to_string();
    let SpawnedDaemon {
        mut child,
        port,
        notifications: _notifications,
    } = spawn_daemon(
        "::1",
        &[
            "-cert",
            s.pki.server_pem.to_str().unwrap(),
            "-port",
            &backend_port,
        ],
        &[],
        &s.syslog,
    );
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    let stream = TcpStream::connect(("::1", port)).unwrap();
    let mut client = config.connect("localhost", stream).unwrap();
    client.write_all(b"six").unwrap();
    let mut echoed = [0u8; 3];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"six");
    let _ = child.kill();
    let _ = child.wait();
}

/// Python's ssl client connects twice per protocol version, the second time offering the first session's ticket.
const RESUMING_CLIENT: &str = "
import socket, ssl, sys
port = int(sys.argv[1])
for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    session = None
    for attempt in ('first', 'second'):
        with ctx.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), session=session) as s:
            s.sendall(b'r')
            assert s.recv(1) == b'r'
            print(s.version(), attempt, 'reused' if s.session_reused else 'new')
            session = s.session
";

#[test]
fn tls_sessions_resume_in_another_child_process() {
    let s = setup("resume");
    let daemon = s.daemon(backend(echo), &[]);
    let mut python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", RESUMING_CLIENT, &daemon.port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut python, IO_TIMEOUT);
    let (mut text, mut errors) = (String::new(), String::new());
    python
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    python
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert!(
        status.is_some_and(|status| status.success()),
        "{status:?}: {errors}"
    );
    assert_eq!(
        text,
        "TLSv1.3 first new\nTLSv1.3 second reused\nTLSv1.2 first new\nTLSv1.2 second reused\n",
        "{errors}"
    );
}

/// The configured context logs every handshake state with -state: the parent's warm-up handshakes must leave no
/// such line, since they use a stand-in context, never the configured key (an RSA key's blinding values would
/// otherwise be made once in the parent and be the same in every child).
#[test]
fn the_warm_up_handshakes_never_use_the_configured_key() {
    let mut s = setup("warm-up");
    let rsa_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    write_identity(
        &s.pki.server_pem,
        &issue_with_key("rsa server", None, false, rsa_key),
    );
    let daemon = s.daemon(backend(echo), &["-debug", "-state"]);
    s.syslog
        .expect("warm-up: handshakes done with a stand-in ECDSA key");
    // Handshake lines (-state) of a process: the parent must have none, its warm-up used no configured context.
    let parent = format!("sslwrap[{}]:", daemon.pid());
    let handshake_lines = |lines: &[String], from_parent: bool| {
        lines
            .iter()
            .filter(|line| line.contains("TLS handshake") || line.contains("TLS state:"))
            .filter(|line| line.contains(&parent) == from_parent)
            .count()
    };
    let before_client = s.syslog.settle().to_vec();
    assert_eq!(server_common_name(daemon.port), "rsa server");
    // The configured context does log its handshakes, in the session processes: wait for the client's. (A busy
    // syslog queue may drop some of a burst's lines, never all of them.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut logged = s.syslog.settle().to_vec();
    while handshake_lines(&logged, false) <= handshake_lines(&before_client, false) {
        assert!(
            Instant::now() < deadline,
            "the configured context logs no handshake: {logged:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        logged = s.syslog.settle().to_vec();
    }
    assert_eq!(
        handshake_lines(&logged, true),
        0,
        "the parent ran handshakes on the configured context: {logged:#?}"
    );
}

/// A client socket that holds what TLS writes until told to send, so several records leave in one TCP segment.
#[derive(Debug)]
struct Batched {
    socket: TcpStream,
    held: Vec<u8>,
}

impl Read for Batched {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.socket.read(buffer)
    }
}

impl Write for Batched {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.held.extend_from_slice(data);
        Ok(data.len())
    }

    /// OpenSSL flushes after each handshake flight; application records wait for `send_held`.
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_held()
    }
}

impl Batched {
    fn send_held(&mut self) -> std::io::Result<()> {
        self.socket.write_all(&self.held)?;
        self.held.clear();
        Ok(())
    }
}

/// Three records in one segment: OpenSSL reads them all at once, and the relay must pass on the two it holds
/// without waiting for the socket to become readable again (it will not: nothing more is coming).
#[test]
fn records_that_arrive_together_are_all_relayed_at_once() {
    let s = setup("batched");
    // No idle limit: a record the relay failed to pass on would then wait for ever, not just for the next wake-up.
    let daemon = s.daemon(backend(echo), &["-timeout", "0"]);
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    let batched = Batched {
        socket: tcp(daemon.port),
        held: Vec::new(),
    };
    let mut client = config.connect("localhost", batched).unwrap();
    for word in [&b"one "[..], b"two ", b"three"] {
        client.ssl_write(word).unwrap();
    }
    client.get_mut().send_held().unwrap();
    let mut echoed = vec![0u8; 13];
    client
        .read_exact(&mut echoed)
        .expect("every record of the segment is echoed");
    assert_eq!(echoed, b"one two three");
}

/// Sets a limit of a process running as nobody:nogroup. prlimit runs as nobody too: a process may change the limits
/// of another with the same ids, while root would need CAP_SYS_RESOURCE, which a container may not grant.
fn prlimit_as_nobody(pid: u32, limit: &str) {
    let status = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "prlimit",
        ])
        .args(["--pid", &pid.to_string(), limit])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit {limit} failed");
}

/// One echo round trip through a fresh TLS session; the error says how far it got.
fn echo_round_trip(port: u16, message: &[u8]) -> Result<(), String> {
    let mut client = try_tls(port, |_| {})?;
    client.write_all(message).map_err(|e| e.to_string())?;
    let mut echoed = vec![0u8; message.len()];
    client.read_exact(&mut echoed).map_err(|e| e.to_string())?;
    if echoed == message {
        Ok(())
    } else {
        Err("wrong echo".to_string())
    }
}

#[test]
fn the_pidfile_names_the_parent_once_ready_outlives_its_sessions_and_is_removed_on_sigterm() {
    let s = setup("pidfile");
    let pidfile = s.dir.path("sslwrap.pid");
    // A stale file, as a crashed run leaves behind, is replaced.
    std::fs::write(&pidfile, "999999\n").unwrap();
    let daemon = s.daemon(backend(echo), &["-pidfile", pidfile.to_str().unwrap()]);
    let named = format!("{}\n", daemon.pid());
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), named);
    for n in 0..3 {
        echo_round_trip(daemon.port, format!("session {n}").as_bytes()).unwrap();
    }
    let left = wait_for_no_children(daemon.pid());
    assert!(left.is_empty(), "sessions still running: {left:?}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        named,
        "an ended session touched the pid file"
    );
    let status = daemon.stop().expect("the daemon did not exit on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!pidfile.exists(), "the pid file was left behind");
}

#[test]
fn a_failed_fork_keeps_clients_waiting_and_serves_them_once_fork_works_again() {
    let s = setup("fork-fails");
    require_root();
    // The whole daemon runs as nobody, without capabilities (with -user the parent would stay root, which no
    // process limit binds): with a limit of one process per user every fork fails (EAGAIN), whatever else runs as
    // nobody.
    let port = free_port_on("127.0.0.1");
    let mut line = s.legacy_line(backend(echo), &[]);
    line.extend(["-accept".to_string(), format!("127.0.0.1:{port}")]);
    let notifications = notifications_for_nobody("fork-fails");
    let daemon = KilledOnDrop(notifications.start(&mut as_nobody(&s, &line), "sslwrap as nobody"));
    let pid = daemon.0.id();
    let hard_limit = hard_process_limit(pid);
    prlimit_as_nobody(pid, "--nproc=1:");
    let clients: Vec<_> = (0..3)
        .map(|n| {
            std::thread::spawn(move || {
                echo_round_trip(port, format!("waiting client {n}").as_bytes())
            })
        })
        .collect();
    let mut syslog = s.syslog;
    syslog.expect(
        "fork failed: Resource temporarily unavailable; new connections wait until it works again",
    );
    prlimit_as_nobody(pid, &format!("--nproc={hard_limit}:"));
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        results.iter().all(Result::is_ok),
        "{results:?} {:#?}",
        syslog.settle()
    );
    let fork_failures = syslog
        .lines
        .iter()
        .filter(|line| line.contains("fork failed"))
        .count();
    assert_eq!(
        fork_failures, 1,
        "the fork failure is logged once per interval: {:#?}",
        syslog.lines
    );
}

/// The hard "Max processes" limit of a process (only the soft limit can be lowered and raised again here).
fn hard_process_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max processes"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

/// What each open descriptor of a process refers to (`socket:[1234]`, `anon_inode:[signalfd]`, `/dev/null` ...).
fn descriptor_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_session_process_holds_only_its_own_descriptors() {
    let s = setup("child-fds");
    let secret = s.dir.path("secret.txt");
    std::fs::write(&secret, "the secret\n").unwrap();
    let port = free_port_on("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let mut line = s.legacy_line(backend(echo), &[]);
    line.extend(["-accept".to_string(), accept]);
    // The launching shell leaves fd 7 open on a secret file.
    let notifications = Notifications::new();
    let daemon = KilledOnDrop(
        notifications.start(
            std::process::Command::new("/bin/sh")
                .args(["-c", "exec 7<\"$0\"; exec \"$@\""])
                .arg(&secret)
                .arg(BINARY)
                .args(&line)
                .env("SSLWRAP_SYSLOG_SOCKET", &s.syslog.path),
            "sslwrap",
        ),
    );
    let mut client = tls(port);
    client.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).unwrap();
    let parent = daemon.0.id();
    let parent_targets = descriptor_targets(parent);
    assert!(
        !parent_targets
            .iter()
            .any(|target| target.ends_with("secret.txt")),
        "the daemon kept a descriptor it inherited: {parent_targets:?}"
    );
    let sessions = children_of(parent);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let targets = descriptor_targets(sessions[0].0);
    assert!(
        !targets.iter().any(|target| target.ends_with("secret.txt")),
        "the session process kept a descriptor sslwrap inherited: {targets:?}"
    );
    assert!(
        !targets.iter().any(|target| target.contains("signalfd")),
        "the session process kept the daemon's signalfd: {targets:?}"
    );
    let sockets = targets
        .iter()
        .filter(|target| target.starts_with("socket:"))
        .count();
    assert_eq!(
        sockets, 3,
        "a session holds its client, its backend and the syslog socket, not the listener: {targets:?}"
    );
}

#[test]
fn one_source_cannot_take_every_session_slot() {
    let mut s = setup("per-source");
    let daemon = s.daemon(
        backend(echo),
        &[
            "-maxconn",
            "8",
            "-maxconn_per_source",
            "5",
            "-handshake_timeout",
            "50",
        ],
    );
    // 50 connections from 127.0.0.5 that never send a ClientHello, held by a helper until its stdin closes.
    let holder_script = format!(
        "import socket, sys\n\
         held = []\n\
         for _ in range(50):\n\
         \x20   s = socket.socket(); s.bind(('127.0.0.5', 0)); s.connect(('127.0.0.1', {}))\n\
         \x20   held.append(s)\n\
         print('connected', flush=True)\n\
         sys.stdin.readline()\n",
        daemon.port
    );
    let mut holder = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &holder_script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "connected");
    s.syslog
        .expect("127.0.0.5 has 5 sessions (-maxconn_per_source); its new connections wait");
    // A client from another source still gets one of the slots the flood cannot take.
    let served = echo_round_trip(daemon.port, b"another source");
    let sessions = children_of(daemon.pid()).len();
    drop(holder.stdin.take());
    let _ = wait_with_timeout(&mut holder, Duration::from_secs(20));
    assert_eq!(served, Ok(()));
    assert!(
        sessions <= 6,
        "{sessions} sessions: the flood holds more than its 5"
    );
}

/// sslwrap in daemon mode with its stderr a pipe nobody reads (-state writes some twenty lines per session, and the
/// pipe's 64 KiB are full after a few dozen sessions): every session must still be served. `as_nobody`: started as
/// nobody, as a supervisor's `setuidgid` does, so the root-made pipe cannot be opened anew through /proc.
/// Lets a daemon that runs as nobody read the test's certificate and log to its syslog socket.
fn open_to_nobody(s: &Setup) {
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (&s.dir.0, 0o755),
        (&s.pki.server_pem, 0o644),
        (&s.syslog.path, 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// sslwrap started as nobody:nogroup with `line`, logging to the test's syslog.
fn as_nobody(s: &Setup, line: &[String]) -> std::process::Command {
    open_to_nobody(s);
    let mut command = std::process::Command::new("setpriv");
    command
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            BINARY,
        ])
        .args(line)
        .env("SSLWRAP_SYSLOG_SOCKET", &s.syslog.path);
    command
}

/// A notification socket a daemon running as nobody can reach: an abstract name has no file permissions.
fn notifications_for_nobody(name: &str) -> Notifications {
    Notifications::abstract_named(&format!("sslwrap-test-{}-{name}", std::process::id()))
}

fn unread_stderr_never_stalls(name: &str, as_nobody_user: bool) {
    let s = setup(name);
    let port = free_port_on("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let mut line = s.legacy_line(backend(echo), &["-state", "-debug"]);
    line.extend(["-accept".to_string(), accept]);
    let mut command = if as_nobody_user {
        as_nobody(&s, &line)
    } else {
        sslwrap(&as_strs(&line), &s.syslog)
    };
    let notifications = notifications_for_nobody(name);
    let mut daemon = KilledOnDrop(
        command
            .env("NOTIFY_SOCKET", &notifications.path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    notifications.wait_ready(&mut daemon.0, "sslwrap");
    for n in 0..120 {
        if let Err(reason) = echo_round_trip(port, format!("session {n}").as_bytes()) {
            panic!("session {n} failed with stderr unread: {reason}");
        }
    }
    // Held unread to the end.
    let _unread = daemon.0.stderr.take();
}

#[test]
fn an_unread_stderr_pipe_never_stalls_the_daemon_or_its_sessions() {
    unread_stderr_never_stalls("stderr-pipe", false);
}

#[test]
fn an_unread_stderr_pipe_that_cannot_be_reopened_never_stalls_either() {
    unread_stderr_never_stalls("stderr-pipe-nobody", true);
}
