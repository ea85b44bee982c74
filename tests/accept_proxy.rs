//! `-accept_proxy` and `-accept_proxy_from` end to end (issue 17): a test client plays the load balancer, writing a
//! PROXY header (v1 text or v2 binary) on a plain TCP connection and then doing TLS on the same connection with the
//! openssl crate. What a user sees is asserted: the `-exec` program's TCPREMOTEIP and friends, the `-proxy` header
//! sslwrap sends on to a backend, the log lines naming the carried address; a connection without a header or from a
//! peer outside `-accept_proxy_from` dropped with one log line naming the real peer; a v2 LOCAL header keeping the
//! real addresses; and health checks (a connection closing or resetting without a byte, or right after its header)
//! logged only with `-debug`, in inetd and daemon mode, with and without `-starttls`.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use openssl::ssl::SslStream;

use common::*;
use support::*;

/// The carried client in every v1 test: a documentation address, never this host's.
const V1_HEADER: &[u8] = b"PROXY TCP4 203.0.113.9 198.51.100.1 40000 993\r\n";

/// A v2 PROXY header over TCP/IPv6 from [2001:db8::7]:50000 to [2001:db8::1]:993, with a NOOP TLV to skip.
fn v2_ipv6_header() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0x00, 36 + 5]);
    header.extend_from_slice(&[
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
    ]);
    header.extend_from_slice(&[
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    ]);
    header.extend_from_slice(&[0xC3, 0x50, 0x03, 0xE1]);
    header.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
    header
}

/// HAProxy's health-check header: v2, LOCAL, AF_UNSPEC, nothing after it.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// Connects and runs the TLS handshake with `header` in front of it: the header and the ClientHello leave in one
/// write, as a balancer forwarding a client's first segment sends them, so a reader taking one byte too many would
/// break the handshake.
fn tls_after_header(port: u16, header: &[u8]) -> Result<SslStream<HeaderFirst>, String> {
    let stream = HeaderFirst {
        stream: tcp(port),
        header: Some(header.to_vec()),
    };
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    config
        .connect("localhost", stream)
        .map_err(|error| error.to_string())
}

/// What the -exec program wrote, up to sslwrap's close_notify.
fn read_to_the_end(client: &mut SslStream<HeaderFirst>) -> String {
    let mut text = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        match client.ssl_read(&mut buffer) {
            Ok(count) => text.extend_from_slice(&buffer[..count]),
            Err(error) if error.code() == openssl::ssl::ErrorCode::ZERO_RETURN => break,
            Err(error) => panic!("{error} after {} bytes", text.len()),
        }
    }
    String::from_utf8(text).unwrap()
}

/// A TCP connection whose first write carries the PROXY header in front of its bytes.
#[derive(Debug)]
struct HeaderFirst {
    stream: TcpStream,
    header: Option<Vec<u8>>,
}

impl Read for HeaderFirst {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buffer)
    }
}

impl Write for HeaderFirst {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(mut first) = self.header.take() {
            first.extend_from_slice(data);
            self.stream.write_all(&first)?;
            return Ok(data.len());
        }
        self.stream.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// `-cert server.pem`, `extra`, then `-exec` of a script printing its environment (which must come last).
fn exec_env_line(s: &Setup, extra: &[&str]) -> Vec<String> {
    let program = script(&s.dir, "env.sh", "env");
    let mut line = vec![
        "-cert".to_string(),
        s.pki.server_pem.to_str().unwrap().to_string(),
    ];
    line.extend(extra.iter().map(|word| word.to_string()));
    line.extend(["-exec".to_string(), program]);
    line
}

/// The program's environment as seen through sslwrap, after sending `header`.
fn environment_after(port: u16, header: &[u8]) -> String {
    let mut client = tls_after_header(port, header).expect("TLS after the header");
    read_to_the_end(&mut client)
}

fn assert_has_line(text: &str, expected: &str) {
    assert!(
        text.lines().any(|line| line == expected),
        "{expected} missing from:\n{text}"
    );
}

fn the_program_sees_the_carried_client(name: &str, mode: Mode) {
    let mut s = setup(name);
    let line = exec_env_line(&s, &["-accept_proxy", "-debug"]);
    let front = Front::start(mode, "127.0.0.1", &as_strs(&line), &s.syslog);
    let text = environment_after(front.port(), V1_HEADER);
    for expected in [
        "TCPREMOTEIP=203.0.113.9",
        "TCPREMOTEPORT=40000",
        "TCPLOCALIP=198.51.100.1",
        "TCPLOCALPORT=993",
    ] {
        assert_has_line(&text, expected);
    }
    // The -debug session line names the carried client; the header line names the balancer it came through.
    s.syslog.expect("203.0.113.9:40000: TLSv1.3");
    let noted = s
        .syslog
        .expect("PROXY v1 header: client 203.0.113.9:40000, to 198.51.100.1:993");
    assert!(noted.contains("127.0.0.1:"), "{noted}");
}

#[test]
fn the_program_sees_the_carried_client_inetd() {
    the_program_sees_the_carried_client("ap-exec-inetd", Mode::Inetd);
}

#[test]
fn the_program_sees_the_carried_client_daemon() {
    the_program_sees_the_carried_client("ap-exec-daemon", Mode::Daemon);
}

#[test]
fn a_v2_local_header_keeps_the_real_addresses() {
    let s = setup("ap-local");
    let line = exec_env_line(&s, &["-accept_proxy"]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let mut client = tls_after_header(daemon.port, V2_LOCAL).expect("TLS after LOCAL");
    let own = client.get_ref().stream.local_addr().unwrap();
    let text = read_to_the_end(&mut client);
    assert_has_line(&text, "TCPREMOTEIP=127.0.0.1");
    assert_has_line(&text, &format!("TCPREMOTEPORT={}", own.port()));
    assert_has_line(&text, &format!("TCPLOCALPORT={}", daemon.port));
}

static HEADERS_SENT_ON: Mutex<Option<mpsc::Sender<String>>> = Mutex::new(None);

/// A backend that reports the PROXY v1 line sslwrap sends it.
fn capture_v1_line(stream: TcpStream) {
    use std::io::BufRead;
    let mut line = Vec::new();
    let _ = std::io::BufReader::new(stream).read_until(b'\n', &mut line);
    let sender = HEADERS_SENT_ON.lock().unwrap().clone().unwrap();
    let _ = sender.send(String::from_utf8_lossy(&line).into_owned());
}

#[test]
fn the_header_sent_on_carries_the_client_of_a_v2_header() {
    let (sender, receiver) = mpsc::channel();
    *HEADERS_SENT_ON.lock().unwrap() = Some(sender);
    let mut s = setup("ap-sent-on");
    let line = s.legacy_line(backend(capture_v1_line), &["-accept_proxy", "-proxy", "v1"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let client = tls_after_header(inetd.port, &v2_ipv6_header()).expect("TLS after v2");
    let sent_on = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("no header reached the backend");
    assert_eq!(sent_on, "PROXY TCP6 2001:db8::7 2001:db8::1 50000 993\r\n");
    drop(client);
    inetd.wait_children();
    // The session's end (the backend closed first) is logged with the carried client, never the balancer.
    for logged in s.syslog.settle() {
        assert!(
            !logged.contains("127.0.0.1:"),
            "the balancer was named: {logged}"
        );
    }
}

#[test]
fn a_connection_without_a_header_is_dropped_with_one_line_naming_the_peer() {
    let mut s = setup("ap-no-header");
    let line = s.legacy_line(backend(echo), &["-accept_proxy"]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let stream = tcp(daemon.port);
    let own = stream.local_addr().unwrap();
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    assert!(
        config.connect("localhost", stream).is_err(),
        "a client without a header was served"
    );
    let needle = format!(
        "{own}: no valid PROXY header (no PROXY header: the connection starts with a TLS handshake)"
    );
    s.syslog.expect(&needle);
    let about_it: Vec<_> = s
        .syslog
        .settle()
        .iter()
        .filter(|logged| logged.contains(&own.to_string()))
        .cloned()
        .collect();
    assert_eq!(about_it.len(), 1, "{about_it:#?}");
}

#[test]
fn a_truncated_header_is_dropped_and_logged() {
    let mut s = setup("ap-truncated");
    let line = s.legacy_line(backend(echo), &["-accept_proxy"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let mut stream = tcp(inetd.port);
    let own = stream.local_addr().unwrap();
    stream.write_all(&V1_HEADER[..20]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "sslwrap answered a truncated header");
    s.syslog.expect(&format!(
        "{own}: no valid PROXY header (the connection closed after 20 bytes, inside the PROXY header)"
    ));
}

#[test]
fn only_peers_in_accept_proxy_from_may_send_a_header() {
    let mut s = setup("ap-from");
    let refusing = exec_env_line(
        &s,
        &[
            "-accept_proxy",
            "-accept_proxy_from",
            "192.0.2.0/24,2001:db8::/32",
            // A refusal that failed would otherwise wait the default minute for a handshake.
            "-handshake_timeout",
            "5",
        ],
    );
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&refusing), &s.syslog);
    let mut stream = tcp(daemon.port);
    let own = stream.local_addr().unwrap();
    stream.write_all(V1_HEADER).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a peer outside the list was served");
    s.syslog.expect(&format!(
        "{own}: refused: -accept_proxy_from does not allow this peer to send a PROXY header"
    ));
    let accepting = exec_env_line(
        &s,
        &[
            "-accept_proxy",
            "-accept_proxy_from",
            "192.0.2.0/24,127.0.0.0/8",
        ],
    );
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&accepting), &s.syslog);
    assert_has_line(
        &environment_after(daemon.port, V1_HEADER),
        "TCPREMOTEIP=203.0.113.9",
    );
}

/// A plaintext SMTP backend: its greeting, then it reads until the other side closes.
fn smtp_greeting(mut stream: TcpStream) {
    let _ = stream.write_all(b"220 backend ESMTP\r\n");
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}

/// How a health check ends its connection.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// shutdown(SHUT_WR), then read to EOF: sslwrap sees EOF, and the test sees the session end.
    HalfClose,
    /// A reset (SO_LINGER 0), as HAProxy ends its checks; the test waits for the inetd-mode process.
    Reset,
}

/// Runs one health check: connect, maybe `header`, then end as `check` says; returns the check's own address.
fn health_check(port: u16, header: &[u8], check: Check) -> std::net::SocketAddr {
    match check {
        Check::HalfClose => {
            let mut stream = tcp(port);
            let own = stream.local_addr().unwrap();
            stream.write_all(header).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            own
        }
        Check::Reset => {
            // Python sets SO_LINGER to 0, which std cannot; it prints its address and resets.
            let program = "import socket, struct, sys\n\
                 s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                 s.sendall(bytes.fromhex(sys.argv[2]))\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
                 print('%s:%d' % s.getsockname())\n\
                 s.close()\n";
            let ran = run(PYTHON, &["-c", program, &port.to_string(), &hex(header)]);
            assert!(ran.succeeded(), "{ran:#?}");
            ran.stdout.trim().parse().unwrap()
        }
    }
}

/// A health check leaves no log line by default, and debug lines only with -debug. `proxy`: with -accept_proxy,
/// the header the check sends (maybe none).
fn health_check_is_not_an_error(
    name: &str,
    mode: Mode,
    starttls: bool,
    proxy: Option<&[u8]>,
    check: Check,
) {
    for debug in [false, true] {
        let mut s = setup(&format!("{name}-{debug}"));
        let mut extra = vec![];
        if proxy.is_some() {
            extra.push("-accept_proxy");
        }
        if starttls {
            extra.extend(["-starttls", "smtp"]);
        }
        if debug {
            extra.push("-debug");
        }
        let handler = if starttls { smtp_greeting } else { echo };
        let line = s.legacy_line(backend(handler), &extra);
        let front = Front::start(mode, "127.0.0.1", &as_strs(&line), &s.syslog);
        let own = health_check(front.port(), proxy.unwrap_or_default(), check);
        if let Front::Inetd(inetd) = &front {
            let statuses = inetd.wait_children();
            assert!(
                statuses.iter().all(|status| status.success()),
                "{statuses:?}"
            );
        }
        // A connection reset before sslwrap asked for its addresses has none any more: "unknown peer".
        let peer = own.to_string();
        let about_the_check =
            |logged: &&String| logged.contains(&peer) || logged.contains("unknown peer");
        // The engine's own quiet end when the client closes before TLS; else the health check line.
        let needle = match (starttls, check) {
            (true, Check::HalfClose) => "client closed the connection before TLS",
            _ => "without sending a byte (a health check?)",
        };
        if debug {
            // In daemon mode the session may still be logging: wait for its line first.
            s.syslog.expect(needle);
        }
        let about_it: Vec<_> = s
            .syslog
            .settle()
            .iter()
            .filter(about_the_check)
            .cloned()
            .collect();
        if debug {
            // Priority 15: facility user, severity debug.
            assert!(
                about_it.iter().all(|logged| logged.starts_with("<15>")),
                "{mode:?} {check:?}: {about_it:#?}"
            );
            assert!(
                about_it.iter().any(|logged| logged.contains(needle)),
                "{mode:?} {check:?}: {about_it:#?}"
            );
        } else {
            assert!(about_it.is_empty(), "{mode:?} {check:?}: {about_it:#?}");
        }
    }
}

#[test]
fn a_silent_connection_is_no_error_daemon() {
    health_check_is_not_an_error("hc-daemon", Mode::Daemon, false, None, Check::HalfClose);
}

#[test]
fn a_silent_connection_is_no_error_inetd_reset() {
    health_check_is_not_an_error("hc-inetd", Mode::Inetd, false, None, Check::Reset);
}

#[test]
fn a_silent_connection_is_no_error_starttls_inetd_reset() {
    health_check_is_not_an_error("hc-starttls", Mode::Inetd, true, None, Check::Reset);
}

#[test]
fn a_silent_connection_is_no_error_starttls_daemon() {
    health_check_is_not_an_error("hc-starttls-d", Mode::Daemon, true, None, Check::HalfClose);
}

#[test]
fn a_local_header_then_a_reset_is_no_error_inetd() {
    health_check_is_not_an_error(
        "hc-local-inetd",
        Mode::Inetd,
        false,
        Some(V2_LOCAL),
        Check::Reset,
    );
}

#[test]
fn a_local_header_then_a_close_is_no_error_daemon() {
    health_check_is_not_an_error(
        "hc-local-daemon",
        Mode::Daemon,
        false,
        Some(V2_LOCAL),
        Check::HalfClose,
    );
}

#[test]
fn a_local_header_then_a_reset_is_no_error_starttls() {
    health_check_is_not_an_error(
        "hc-local-starttls",
        Mode::Inetd,
        true,
        Some(V2_LOCAL),
        Check::Reset,
    );
}

#[test]
fn a_connection_closed_before_its_header_is_no_error() {
    health_check_is_not_an_error(
        "hc-no-header",
        Mode::Daemon,
        false,
        Some(b""),
        Check::HalfClose,
    );
}

#[test]
fn a_connection_reset_before_its_header_is_no_error() {
    health_check_is_not_an_error(
        "hc-no-header-r",
        Mode::Inetd,
        false,
        Some(b""),
        Check::Reset,
    );
}

static STARTTLS_HEADERS: Mutex<Option<mpsc::Sender<String>>> = Mutex::new(None);

/// An SMTP backend that reports the PROXY v1 line in front of the session, then greets and reads to the end.
fn capture_then_greet(stream: TcpStream) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = Vec::new();
    let _ = reader.read_until(b'\n', &mut line);
    let sender = STARTTLS_HEADERS.lock().unwrap().clone().unwrap();
    let _ = sender.send(String::from_utf8_lossy(&line).into_owned());
    smtp_greeting(reader.into_inner());
}

#[test]
fn with_starttls_the_header_is_read_before_the_greeting_and_its_client_sent_on() {
    let (sender, receiver) = mpsc::channel();
    *STARTTLS_HEADERS.lock().unwrap() = Some(sender);
    let s = setup("ap-starttls");
    let line = s.legacy_line(
        backend(capture_then_greet),
        &["-accept_proxy", "-starttls", "smtp", "-proxy", "v1"],
    );
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let mut stream = tcp(daemon.port);
    stream.write_all(V1_HEADER).unwrap();
    let mut greeting = [0u8; 64];
    let count = stream.read(&mut greeting).unwrap();
    assert!(
        greeting[..count].starts_with(b"220 backend ESMTP"),
        "{:?}",
        String::from_utf8_lossy(&greeting[..count])
    );
    let sent_on = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("no header reached the backend");
    assert_eq!(sent_on, "PROXY TCP4 203.0.113.9 198.51.100.1 40000 993\r\n");
}
