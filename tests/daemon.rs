//! Daemon mode (`-accept`) end to end: the documentation's daemon line, concurrency and sequential load, reaping,
//! descriptor hygiene, EMFILE back-off, -maxconn, SIGHUP reload, SIGTERM, and the relay's fault cases. Each test
//! starts its own daemon on a free loopback port and stops it by PID.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

const MIB: usize = 1024 * 1024;

/// A running `sslwrap ... -accept 127.0.0.1:PORT`.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(args: &[&str], syslog: &Syslog) -> Daemon {
        let (child, port) = spawn_daemon("127.0.0.1", args, &[], syslog);
        // The port listens before the parent's warm-up is over. A handshake attempt (whatever its outcome) waits until
        // a child has answered, so the parent is then accepting; that probe session must have ended before anything
        // is counted.
        let probe = tcp(port);
        let mut probe_config = connector(|_| {}).configure().unwrap();
        probe_config.set_verify_hostname(false);
        let _ = probe_config.connect("localhost", probe);
        let left = wait_for_no_children(child.id());
        assert!(left.is_empty(), "the probe session did not end: {left:?}");
        Daemon { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// CPU seconds (user + system) the parent has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        wait_with_timeout(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let cpu_before = daemon.cpu_seconds();
    std::thread::sleep(Duration::from_secs(3));
    let cpu_used = daemon.cpu_seconds() - cpu_before;
    assert!(
        cpu_used < 0.5,
        "the daemon spun on EMFILE: {cpu_used} CPU seconds in 3 s"
    );
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
    let mut syslog = s.syslog;
    syslog.expect("accept failed: Too many open files; pausing new connections");
}

#[test]
fn maxconn_limits_children_and_still_serves_everyone() {
    fn slow_echo(mut stream: TcpStream) {
        let mut buffer = [0u8; 16];
        if let Ok(count) = stream.read(&mut buffer) {
            std::thread::sleep(Duration::from_millis(300));
            let _ = stream.write_all(&buffer[..count]);
        }
    }
    let mut s = setup("maxconn");
    let daemon = s.daemon(
        backend(slow_echo),
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

fn server_common_name(port: u16) -> String {
    let client = tls(port);
    let certificate = client.ssl().peer_certificate().unwrap();
    let entry = certificate
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .unwrap();
    entry.data().to_string().unwrap()
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

#[test]
fn sigterm_exits_0_and_the_session_in_flight_completes() {
    fn late_reply(mut stream: TcpStream) {
        let mut buffer = [0u8; 4];
        if stream.read_exact(&mut buffer).is_ok() {
            std::thread::sleep(Duration::from_millis(800));
            let _ = stream.write_all(b"finished");
        }
    }
    let s = setup("sigterm");
    let daemon = s.daemon(backend(late_reply), &[]);
    let port = daemon.port;
    let mut client = tls(port);
    client.write_all(b"work").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(daemon.stop().and_then(|status| status.code()), Some(0));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listening socket is closed"
    );
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
    // Closing a socket with unread data in its receive buffer makes the kernel send a reset.
    std::thread::sleep(Duration::from_millis(200));
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
    fn reset_after_some(mut stream: TcpStream) {
        let _ = stream.write_all(&pattern(200_000, 6));
        // The client's bytes stay unread, so closing now sends a reset instead of a FIN.
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut s = setup("backendreset");
    let daemon = s.daemon(backend(reset_after_some), &[]);
    let mut client = tls(daemon.port);
    client.write_all(b"never read by the backend").unwrap();
    let outcome = read_to_close_notify(&mut client);
    let error = outcome.expect_err("a cut-off transfer must not end with close_notify");
    assert!(error.contains("after 200000 bytes"), "{error}");
    let line = s.syslog.expect("session ended: backend:");
    assert!(line.contains("Connection reset by peer"), "{line}");
    assert_eq!(
        tls(daemon.port).ssl().version_str(),
        "TLSv1.3",
        "the daemon still serves"
    );
}

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
    let started = Instant::now();
    let outcome = read_to_close_notify(&mut client);
    assert!(
        outcome.is_err(),
        "an idle timeout is not a clean end: {outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    s.syslog.expect("idle for 1 s, closed");
}

#[test]
fn slowloris_connections_are_dropped_at_the_handshake_deadline_while_others_are_served() {
    let mut s = setup("slowloris");
    let daemon = s.daemon(backend(echo), &["-handshake_timeout", "2"]);
    let silent: Vec<TcpStream> = (0..50).map(|_| tcp(daemon.port)).collect();
    let started = Instant::now();
    let mut client = tls(daemon.port);
    client.write_all(b"served").unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a real client waited for the silent ones"
    );
    for mut connection in silent {
        let mut rest = Vec::new();
        let read = connection.read_to_end(&mut rest);
        assert!(
            read.is_ok() && rest.is_empty(),
            "silent connection not closed cleanly: {read:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    s.syslog.expect("failed: not completed within 2 s");
}

#[test]
fn a_slow_reader_gets_back_pressure_not_unbounded_memory() {
    fn flood(mut stream: TcpStream) {
        let chunk = pattern(MIB, 9);
        for _ in 0..256 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    }
    let s = setup("backpressure");
    let daemon = s.daemon(backend(flood), &[]);
    let mut client = tls(daemon.port);
    let mut first = [0u8; 1000];
    client.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_secs(1));
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
    let (mut child, port) = spawn_daemon(
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

#[test]
fn the_warm_up_handshake_never_uses_an_rsa_key() {
    let mut ecdsa = setup("warm-up-ecdsa");
    let _daemon = ecdsa.daemon(backend(echo), &["-debug"]);
    ecdsa
        .syslog
        .expect("warm-up: handshakes done with the configured key");

    let mut rsa = setup("warm-up-rsa");
    let rsa_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    write_identity(
        &rsa.pki.server_pem,
        &issue_with_key("rsa server", None, false, rsa_key),
    );
    let daemon = rsa.daemon(backend(echo), &["-debug"]);
    rsa.syslog
        .expect("warm-up: handshakes done with a stand-in ECDSA key");
    assert!(
        !rsa.syslog
            .settle()
            .iter()
            .any(|line| line.contains("with the configured key")),
        "the RSA key was used before any client connected"
    );
    assert_eq!(server_common_name(daemon.port), "rsa server");

    // RSA-PSS keys carry the same blinding state.
    let mut pss = setup("warm-up-rsa-pss");
    let key = pss.dir.path("pss.key");
    let certificate = pss.dir.path("pss.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa-pss",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .args(["-nodes", "-subj", "/CN=pss server", "-days", "2"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut pem = std::fs::read(&certificate).unwrap();
    pem.extend(std::fs::read(&key).unwrap());
    std::fs::write(&pss.pki.server_pem, pem).unwrap();
    let daemon = pss.daemon(backend(echo), &["-debug"]);
    pss.syslog
        .expect("warm-up: handshakes done with a stand-in ECDSA key");
    assert!(
        !pss.syslog
            .settle()
            .iter()
            .any(|line| line.contains("with the configured key")),
        "the RSA-PSS key was used before any client connected"
    );
    assert_eq!(server_common_name(daemon.port), "pss server");
}

/// After a second without traffic a session gives its buffers back; data sent after such pauses must still arrive
/// whole, in both directions.
#[test]
fn data_after_quiet_pauses_still_arrives_intact() {
    let s = setup("quiet");
    let daemon = s.daemon(backend(echo), &[]);
    let mut client = tls(daemon.port);
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1300));
        }
        let data = pattern(48 * 1024, round);
        client.write_all(&data).unwrap();
        let mut echoed = vec![0u8; data.len()];
        client.read_exact(&mut echoed).unwrap();
        assert!(echoed == data, "round {round}: the echo differs");
    }
}

/// Sends 8 MiB, more than the sockets can buffer, to whoever connects.
fn send_eight_mib(mut stream: TcpStream) {
    let _ = stream.write_all(&pattern(8 * MIB, 9));
}

/// A client that stops reading while the backend still sends: the session goes quiet with data waiting in one
/// direction, and the buffer that holds it must not be given back with it.
#[test]
fn a_stalled_reader_loses_nothing_when_the_session_goes_quiet() {
    let s = setup("stalled-reader");
    let daemon = s.daemon(backend(send_eight_mib), &[]);
    let mut client = tls(daemon.port);
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut rest = vec![0u8; 8 * MIB - 1];
    client.read_exact(&mut rest).unwrap();
    let expected = pattern(8 * MIB, 9);
    assert!(
        first[..] == expected[..1] && rest[..] == expected[1..],
        "the data arrived altered"
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
    let daemon = s.daemon(backend(echo), &[]);
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    let batched = Batched {
        socket: tcp(daemon.port),
        held: Vec::new(),
    };
    let mut client = config.connect("localhost", batched).unwrap();
    // Without the fix the relay waits for poll: for ever, or until the quiet-session wake-up after a second.
    client
        .get_ref()
        .socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for word in [&b"one "[..], b"two ", b"three"] {
        client.ssl_write(word).unwrap();
    }
    client.get_mut().send_held().unwrap();
    let sent = Instant::now();
    let mut echoed = vec![0u8; 13];
    client.read_exact(&mut echoed).unwrap();
    let waited = sent.elapsed();
    assert_eq!(echoed, b"one two three");
    assert!(
        waited < Duration::from_millis(900),
        "the last records waited {waited:?}, as long as a quiet session's wake-up"
    );
}

/// Private dirty memory of a process, in KiB, from /proc/PID/smaps_rollup.
fn private_dirty_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Private_Dirty:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What an administrator sees in /proc: a session that has gone quiet holds less memory than one in full flow (its
/// relay buffers and the heap pages freed since are given back; the unit tests in relay.rs check the buffers
/// themselves, this checks what the process keeps).
#[test]
fn a_quiet_session_gives_memory_back() {
    let s = setup("quiet-memory");
    let daemon = s.daemon(backend(echo), &[]);
    let mut client = tls(daemon.port);
    let data = pattern(64 * 1024, 3);
    client.write_all(&data).unwrap();
    let mut echoed = vec![0u8; data.len()];
    client.read_exact(&mut echoed).unwrap();
    let sessions: Vec<u32> = children_of(daemon.pid())
        .into_iter()
        .filter(|(_, state)| *state != 'Z')
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(sessions.len(), 1, "one session process: {sessions:?}");
    let busy = private_dirty_kib(sessions[0]);
    std::thread::sleep(Duration::from_millis(1800));
    let quiet = private_dirty_kib(sessions[0]);
    eprintln!("private dirty: {busy} KiB in flow, {quiet} KiB quiet");
    assert!(
        quiet + 16 <= busy,
        "a quiet session still holds {quiet} KiB (it held {busy} KiB in flow)"
    );
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
fn a_failed_fork_keeps_clients_waiting_and_serves_them_once_fork_works_again() {
    let s = setup("fork-fails");
    if !is_root() {
        panic!("this test lowers a process limit of user nobody: run it as root (as CI does)");
    }
    let daemon = s.daemon(backend(echo), &["-user", "nobody", "-group", "nogroup"]);
    // The parent runs as nobody, without capabilities: with a limit of one process per user every fork fails
    // (EAGAIN), whatever else runs as nobody.
    let hard_limit = hard_process_limit(daemon.pid());
    prlimit_as_nobody(daemon.pid(), "--nproc=1:");
    let port = daemon.port;
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
    prlimit_as_nobody(daemon.pid(), &format!("--nproc={hard_limit}:"));
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
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
    let daemon = s.daemon(backend(echo), &[]);
    let mut client = tls(daemon.port);
    client.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).unwrap();
    let sessions = children_of(daemon.pid());
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let targets = descriptor_targets(sessions[0].0);
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

#[test]
fn an_unread_stderr_pipe_never_stalls_the_daemon_or_its_sessions() {
    let s = setup("stderr-pipe");
    let port = free_port_on("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let mut line = s.legacy_line(backend(echo), &["-state", "-debug"]);
    line.extend(["-accept".to_string(), accept]);
    // stderr is a pipe nobody reads: -state writes some twenty lines per session, and the pipe's 64 KiB are full
    // after a few dozen sessions.
    let mut daemon = sslwrap(&as_strs(&line), &s.syslog)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_listening(port) {
        assert!(Instant::now() < deadline, "sslwrap is not listening");
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in 0..120 {
        if let Err(reason) = echo_round_trip(port, format!("session {n}").as_bytes()) {
            let _ = daemon.kill();
            panic!("session {n} failed with stderr unread: {reason}");
        }
    }
    let unread = daemon.stderr.take();
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(unread);
}
