//! Shared test fixtures: temporary directories, a syslog listener the binary logs to (SSLWRAP_SYSLOG_SOCKET), a
//! certificate authority with server and client certificates, an inetd stand-in that hands each accepted connection
//! to a fresh sslwrap as fds 0/1/2 exactly like inetd does, plaintext backends, and TLS clients. Every wait is bounded.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

pub const BINARY: &str = env!("CARGO_BIN_EXE_sslwrap");
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("sslwrap-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Receives what sslwrap logs, as syslogd would: a thread reads the socket all the time, so the binary never finds
/// the queue full.
pub struct Syslog {
    pub path: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    pub lines: Vec<String>,
}

impl Syslog {
    pub fn new(dir: &TempDir) -> Syslog {
        let path = dir.path("log.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Lives as long as the test process; it only ever blocks in recv.
            while let Ok(count) = socket.recv(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buffer[..count]).into_owned());
            }
        });
        Syslog {
            path,
            received,
            lines: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut received = self.received.lock().unwrap();
        self.lines.append(&mut received);
    }

    /// Waits up to `limit` for a logged line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        self.wait_for_count(needle, 1, limit)
    }

    /// Waits up to `limit` until `count` logged lines contain `needle`; returns the first of them.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        count: usize,
        limit: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            self.drain();
            let mut matching = self.lines.iter().filter(|line| line.contains(needle));
            let first = matching.next().cloned();
            if first.is_some() && 1 + matching.count() >= count {
                return first;
            }
            if Instant::now() >= deadline {
                return None;
            }
            // The datagrams arrive on the receiver's thread, with nothing to wait on here: a short poll step.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a line or fails the test showing everything logged so far.
    pub fn expect(&mut self, needle: &str) -> String {
        match self.wait_for(needle, Duration::from_secs(20)) {
            Some(line) => line,
            None => panic!(
                "no log line containing {needle:?}; logged: {:#?}",
                self.lines
            ),
        }
    }

    /// Everything logged until now. A marker datagram is sent to the socket and waited for: the socket keeps
    /// datagrams in order, so every line sent before this call has then been received. (Lines of a process that is
    /// still running may come later: wait for the event that ends its logging first.)
    pub fn settle(&mut self) -> &[String] {
        static MARKERS: AtomicUsize = AtomicUsize::new(0);
        let marker = format!(
            "settle marker {} {}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::SeqCst)
        );
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(marker.as_bytes(), &self.path).unwrap();
        self.expect(&marker);
        self.lines.retain(|line| *line != marker);
        &self.lines
    }
}

/// A certificate and its key.
pub struct Identity {
    pub cert: X509,
    pub key: PKey<Private>,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// Issues a certificate for `common_name` with a new ECDSA P-256 key, signed by `issuer` (self-signed when None).
pub fn issue(common_name: &str, issuer: Option<&Identity>, is_ca: bool) -> Identity {
    issue_with_key(common_name, issuer, is_ca, new_key())
}

/// Issues a certificate for `common_name` and the given key, signed by `issuer` (self-signed when None); a server
/// certificate is made out for localhost and 127.0.0.1.
pub fn issue_with_key(
    common_name: &str,
    issuer: Option<&Identity>,
    is_ca: bool,
    key: PKey<Private>,
) -> Identity {
    let made_out_for = match is_ca {
        true => None,
        false => Some((&["localhost"][..], Some("127.0.0.1"))),
    };
    sign_certificate(common_name, issuer, key, made_out_for)
}

/// Issues a server certificate for `common_name` with a new ECDSA P-256 key, signed by `issuer` (self-signed when
/// None), with exactly `dns_names` in its subjectAltName: the -certdir tests name their files after them.
pub fn issue_for_dns_names(
    common_name: &str,
    issuer: Option<&Identity>,
    dns_names: &[&str],
) -> Identity {
    sign_certificate(common_name, issuer, new_key(), Some((dns_names, None)))
}

/// A certificate with `key`: a CA when `made_out_for` is None, else a server certificate whose subjectAltName has
/// those DNS names and that IP address.
fn sign_certificate(
    common_name: &str,
    issuer: Option<&Identity>,
    key: PKey<Private>,
    made_out_for: Option<(&[&str], Option<&str>)>,
) -> Identity {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "sslwrap tests")
        .unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder
        .set_issuer_name(issuer.map_or(&name, |ca| ca.cert.subject_name()))
        .unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    match made_out_for {
        None => builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap(),
        Some((dns_names, ip)) => {
            let mut san = SubjectAlternativeName::new();
            for dns_name in dns_names {
                san.dns(dns_name);
            }
            if let Some(ip) = ip {
                san.ip(ip);
            }
            let san = san.build(&builder.x509v3_context(None, None)).unwrap();
            builder.append_extension(san).unwrap();
        }
    }
    builder
        .sign(issuer.map_or(&key, |ca| &ca.key), MessageDigest::sha256())
        .unwrap();
    Identity {
        cert: builder.build(),
        key,
    }
}

/// A CA, a server certificate (CN localhost) and a client certificate, written as PEM files.
pub struct Pki {
    pub ca: Identity,
    pub server: Identity,
    pub client: Identity,
    /// server.pem holds certificate and key in one file, as the 2.0.6 manual makes it.
    pub server_pem: PathBuf,
    pub ca_pem: PathBuf,
}

impl Pki {
    pub fn new(dir: &TempDir) -> Pki {
        let ca = issue("sslwrap test CA", None, true);
        let server = issue("localhost", Some(&ca), false);
        let client = issue("test client", Some(&ca), false);
        let server_pem = dir.path("server.pem");
        write_identity(&server_pem, &server);
        let ca_pem = dir.path("ca.pem");
        std::fs::write(&ca_pem, ca.cert.to_pem().unwrap()).unwrap();
        Pki {
            ca,
            server,
            client,
            server_pem,
            ca_pem,
        }
    }
}

/// Writes certificate then key into one file, mode 600.
pub fn write_identity(path: &Path, identity: &Identity) {
    use std::os::unix::fs::PermissionsExt;
    let mut pem = identity.cert.to_pem().unwrap();
    pem.extend(identity.key.private_key_to_pem_pkcs8().unwrap());
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What most tests start from: a directory, a syslog listener and certificates.
pub struct Setup {
    pub dir: TempDir,
    pub syslog: Syslog,
    pub pki: Pki,
}

pub fn setup(name: &str) -> Setup {
    let dir = TempDir::new(name);
    let syslog = Syslog::new(&dir);
    let pki = Pki::new(&dir);
    Setup { dir, syslog, pki }
}

impl Setup {
    /// The documentation's command line, `-cert server.pem -port P`, followed by `extra`.
    pub fn legacy_line(&self, backend_port: u16, extra: &[&str]) -> Vec<String> {
        let mut words = vec![
            "-cert".to_string(),
            self.pki.server_pem.to_str().unwrap().to_string(),
        ];
        words.extend(["-port".to_string(), backend_port.to_string()]);
        words.extend(extra.iter().map(|word| word.to_string()));
        words
    }
}

/// Borrowed views of owned words, for the start functions.
pub fn as_strs(words: &[String]) -> Vec<&str> {
    words.iter().map(String::as_str).collect()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
}

/// Fails with a clear message when the suite does not run as root (real servers, the privilege drop and chroot need
/// it).
pub fn require_root() {
    assert!(
        is_root(),
        "this test starts real servers or drops privileges: run it as root (as CI does)"
    );
}

/// An sslwrap command logging to the test's syslog.
pub fn sslwrap(args: &[&str], syslog: &Syslog) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env("SSLWRAP_SYSLOG_SOCKET", &syslog.path);
    command
}

/// Starts sslwrap in daemon mode on a free port of `host` ("127.0.0.1" or "::1") with `before`, `-accept ADDRESS`,
/// then `after` (where `-exec PROG ARGS` must stay last), its stdio closed, once it has told READY=1 (listening,
/// warmed up, accepting).
pub fn spawn_daemon(host: &str, before: &[&str], after: &[&str], syslog: &Syslog) -> SpawnedDaemon {
    let port = free_port_on(host);
    let accept = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut all: Vec<&str> = before.to_vec();
    all.extend(["-accept", &accept]);
    all.extend(after);
    let notifications = Notifications::new();
    let child = notifications.start(&mut sslwrap(&all, syslog), &format!("sslwrap {all:?}"));
    SpawnedDaemon {
        child,
        port,
        notifications,
    }
}

/// sslwrap in daemon mode (`spawn_daemon` on 127.0.0.1), past its READY=1; killed and reaped by PID when dropped.
/// Test files add the readings they need in `impl Daemon` blocks of their own.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    _notifications: Notifications,
}

impl Daemon {
    pub fn start(args: &[&str], syslog: &Syslog) -> Daemon {
        let spawned = spawn_daemon("127.0.0.1", args, &[], syslog);
        Daemon {
            child: spawned.child,
            port: spawned.port,
            _notifications: spawned.notifications,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The one session process. Call it once the session has answered (a round trip, a greeting): the daemon forks
    /// before the session reads a byte, so the process exists by then.
    pub fn session_pid(&self) -> u32 {
        children_of(self.pid())
            .first()
            .map(|&(pid, _)| pid)
            .expect("a session process for the connection that was answered")
    }
}

/// One line through an echo session, and back.
pub fn round_trip(client: &mut (impl Read + Write), text: &str) {
    client.write_all(text.as_bytes()).unwrap();
    let mut echoed = vec![0u8; text.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(String::from_utf8_lossy(&echoed), text);
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service manager's notification socket (NOTIFY_SOCKET): a thread receives every datagram at once, as systemd
/// does, so the sender never finds the queue full. A test that starts a daemon with it waits for READY=1, sent once
/// the listeners are open, instead of polling for the port.
pub struct Notifications {
    pub path: PathBuf,
    socket: Arc<UnixDatagram>,
    messages: std::sync::mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Notifications {
    pub fn new() -> Notifications {
        let dir = TempDir::new("notify");
        let path = dir.path("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications::receiving(socket, path, dir)
    }

    /// Listens on an abstract name instead (`@name` in NOTIFY_SOCKET).
    pub fn abstract_named(name: &str) -> Notifications {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Notifications::receiving(
            socket,
            PathBuf::from(format!("@{name}")),
            TempDir::new("notify"),
        )
    }

    fn receiving(socket: UnixDatagram, path: PathBuf, dir: TempDir) -> Notifications {
        let socket = Arc::new(socket);
        let (sender, messages) = std::sync::mpsc::channel();
        let reading = Arc::clone(&socket);
        // Ends when the socket is shut down (drop), which makes recv return 0.
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count @ 1..) = reading.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..count]).into_owned();
                if sender.send(message).is_err() {
                    return;
                }
            }
        });
        Notifications {
            path,
            socket,
            messages,
            reader: Some(reader),
            _dir: dir,
        }
    }

    /// The next message, within a bound.
    pub fn next(&self) -> String {
        self.messages
            .recv_timeout(Duration::from_secs(30))
            .expect("no notification within 30 s")
    }

    /// Messages until one contains `needle` (STATUS lines come whenever the session count changes).
    pub fn until(&self, needle: &str) -> String {
        for _ in 0..50 {
            let message = self.next();
            if message.contains(needle) {
                return message;
            }
        }
        panic!("no notification with {needle:?}");
    }

    /// Spawns `command` (sslwrap in daemon mode, or a wrapper that executes it) with this socket as its
    /// NOTIFY_SOCKET and its standard descriptors on /dev/null, and waits until it has told READY=1.
    pub fn start(&self, command: &mut Command, what: &str) -> Child {
        let mut child = command
            .env("NOTIFY_SOCKET", &self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.wait_ready(&mut child, what);
        child
    }

    /// Waits for READY=1 from `child` (named `what` in the failure); a child that exits first fails at once.
    pub fn wait_ready(&self, child: &mut Child, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // A short bound on each wait only so that an exited child is noticed: each is a wait for the message.
            match self.messages.recv_timeout(Duration::from_millis(200)) {
                Ok(message) if message.lines().any(|line| line == "READY=1") => return,
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(error) => panic!("{what}: notification reader: {error}"),
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what} exited ({status}) instead of listening");
            }
        }
        panic!("{what} did not tell READY=1 within 30 s");
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A daemon started by `spawn_daemon`, with the notification socket it tells its state to.
pub struct SpawnedDaemon {
    pub child: Child,
    pub port: u16,
    pub notifications: Notifications,
}

/// True once some socket is in LISTEN state on `port` (read from /proc, so no probe connection becomes a session
/// of its own in a server's log).
pub fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
            })
    })
}

/// Runs sslwrap to completion with no client (for start-up errors); returns status and stderr.
pub fn run_to_end(args: &[&str], syslog: &Syslog) -> (ExitStatus, String) {
    run_command_to_end(&mut sslwrap(args, syslog))
}

/// Runs `command` (sslwrap, or a wrapper that executes it) to completion with no client; returns status and stderr.
pub fn run_command_to_end(command: &mut Command) -> (ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_with_timeout(&mut child, Duration::from_secs(20)).expect("sslwrap did not exit");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// Waits for a child with a bound; kills it (and fails) when it overstays.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What inetd does: listen, and give each accepted connection to a new sslwrap process as fds 0, 1 and 2.
pub struct Inetd {
    pub port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    pub children: Arc<Mutex<Vec<Child>>>,
}

impl Inetd {
    pub fn start(args: &[&str], syslog: &Syslog) -> Inetd {
        Inetd::start_command("127.0.0.1:0", BINARY, args, syslog)
    }

    /// Waits for every sslwrap started so far to exit; returns their statuses.
    pub fn wait_children(&self) -> Vec<ExitStatus> {
        let mut children = self.children.lock().unwrap();
        children
            .iter_mut()
            .map(|child| wait_with_timeout(child, Duration::from_secs(30)).expect("sslwrap hung"))
            .collect()
    }
}

impl Drop for Inetd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // A failed wait_children may have poisoned the lock; the children must still be stopped.
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for child in children.iter_mut() {
            let _ = wait_with_timeout(child, Duration::from_secs(10));
        }
    }
}

/// A plaintext backend on 127.0.0.1 serving each connection with `handler` in its own thread.
pub fn backend(handler: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            std::thread::spawn(move || handler(stream));
        }
    });
    port
}

/// Echoes every byte back until EOF, then closes.
pub fn echo(mut stream: TcpStream) {
    let mut buffer = [0u8; 65536];
    while let Ok(count) = stream.read(&mut buffer) {
        if count == 0 || stream.write_all(&buffer[..count]).is_err() {
            break;
        }
    }
}

/// Reads to EOF, then answers with the SHA-256 (hex) of what arrived and closes: proves upload and half-close.
pub fn sink_then_digest(mut stream: TcpStream) {
    let mut hasher = openssl::sha::Sha256::new();
    let mut buffer = [0u8; 65536];
    while let Ok(count) = stream.read(&mut buffer) {
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    let _ = stream.write_all(hex(&hasher.finish()).as_bytes());
}

/// A port on which nothing listens yet, for a server the test is about to start on 127.0.0.1.
pub fn closed_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// Ports for test servers come from below the kernel's ephemeral range (32768 and up on Linux): a port the kernel
/// hands to some outgoing connection, or to another test's bind(0), can then never collide with one picked here
/// between the check and the server's own bind. Tests of one process share a counter; processes start at different
/// offsets.
pub fn free_port_on(host: &str) -> u16 {
    const FIRST: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = (std::process::id() * 7919) % SPAN;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::SeqCst) as u32;
        let port = (FIRST + (offset + step * 13) % SPAN) as u16;
        if TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range on {host}");
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic, incompressible-looking test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha256(data))
}

/// A TLS client that does not verify the server, unless `configure` says otherwise.
pub fn connector(configure: impl FnOnce(&mut SslConnectorBuilder)) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    configure(&mut builder);
    builder.build()
}

pub fn tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Connects and completes a handshake, or returns the failure text.
pub fn try_tls(
    port: u16,
    configure: impl FnOnce(&mut SslConnectorBuilder),
) -> Result<SslStream<TcpStream>, String> {
    let connector = connector(configure);
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    config
        .connect("localhost", tcp(port))
        .map_err(|error| error.to_string())
}

pub fn tls(port: u16) -> SslStream<TcpStream> {
    try_tls(port, |_| {}).expect("TLS handshake failed")
}

/// Reads until the TLS peer's close_notify (Ok) or an error.
pub fn read_to_close_notify(stream: &mut SslStream<TcpStream>) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        match stream.ssl_read(&mut buffer) {
            Ok(count) => data.extend_from_slice(&buffer[..count]),
            Err(error) if error.code() == openssl::ssl::ErrorCode::ZERO_RETURN => return Ok(data),
            Err(error) => return Err(format!("{error} after {} bytes", data.len())),
        }
    }
}

/// Writes everything, then sends close_notify (the client's half-close).
pub fn write_and_close(stream: &mut SslStream<TcpStream>, data: &[u8]) {
    stream.write_all(data).unwrap();
    stream.shutdown().unwrap();
}

/// Sends a raw TCP payload and returns whatever comes back until the server closes.
pub fn raw_exchange(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut stream = tcp(port);
    let _ = stream.write_all(payload);
    let _ = stream.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The local address a socket is bound to (for log assertions).
pub fn local(stream: &SslStream<TcpStream>) -> SocketAddr {
    stream.get_ref().local_addr().unwrap()
}

impl Inetd {
    /// Like [`Inetd::start`], but listening on `bind` (for example `[::1]:0`) and starting `program` with `args` for
    /// each connection: the PROXY tests need an IPv6 superserver, and the `-fd` test a helper that starts sslwrap.
    pub fn start_command(bind: &str, program: &str, args: &[&str], syslog: &Syslog) -> Inetd {
        let listener = TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let program = program.to_string();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let log_path = syslog.path.clone();
        let (stop_flag, child_list) = (stop.clone(), children.clone());
        let acceptor = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let fd = OwnedFd::from(stream);
                        let child = Command::new(&program)
                            .args(&args)
                            .env("SSLWRAP_SYSLOG_SOCKET", &log_path)
                            .stdin(Stdio::from(fd.try_clone().unwrap()))
                            .stdout(Stdio::from(fd.try_clone().unwrap()))
                            .stderr(Stdio::from(fd))
                            .spawn()
                            .unwrap();
                        child_list.lock().unwrap().push(child);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Inetd {
            port,
            stop,
            acceptor: Some(acceptor),
            children,
        }
    }
}

/// The processes whose parent is `pid`, each with its state letter from /proc (`Z` for a zombie).
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child_pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name in parentheses may hold spaces: the fields after its closing parenthesis are fixed.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(pid) {
            children.push((child_pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    children
}

/// A child process that is killed and reaped when the test ends, whether it passed or not.
pub struct KilledOnDrop(pub Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_with_timeout(&mut self.0, Duration::from_secs(10));
    }
}

/// The common name of the certificate a daemon on `port` serves now.
pub fn server_common_name(port: u16) -> String {
    let client = tls(port);
    let certificate = client.ssl().peer_certificate().unwrap();
    let entry = certificate
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap();
    entry.data().to_string().unwrap()
}

/// Sends signal `name` ("HUP", "TERM" ...) to the process `pid`, as an administrator's kill(1) does.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// A shell script `name` in `dir` running `body`, executable; returns its path.
pub fn script(dir: &TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}
