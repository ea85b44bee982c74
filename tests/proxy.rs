//! `-proxy [v1|v2]` end to end (issue 8): the built binary sends a PROXY protocol header to real servers that parse
//! it, and the servers' own logs must show the client as the client saw itself — nginx (`listen ... proxy_protocol`)
//! for v1 and v2, inetd and daemon modes, IPv4 (from a second loopback address, 127.0.0.5, so the client differs from
//! sslwrap's own address) and IPv6 (::1); dovecot (`haproxy = yes`) for the client's address and for the security
//! point of the issue: with v2's TLS TLV dovecot knows the session was encrypted and allows the login, with v1 it
//! does not and refuses plaintext authentication. A backend that reads the v2 header back shows its server name and
//! ALPN entries.

mod common;
mod support;

use common::*;
use support::*;

/// Whether the test machine has IPv6 loopback (the IPv6 tests say so and stop when it has not).
fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// curl through sslwrap at `host`:`port`; returns the client's own address and port as curl reports them.
fn curl_through(host: &str, port: u16) -> (String, u16) {
    let url = if host.contains(':') {
        format!("https://[{host}]:{port}/")
    } else {
        format!("https://{host}:{port}/")
    };
    let mut args = vec!["-sS", "-g", "-k", "--max-time", "30"];
    if !host.contains(':') {
        args.extend(["--interface", CLIENT_SOURCE]);
    }
    args.extend(["-w", "\nclient=%{local_ip} %{local_port}\n", &url]);
    let ran = run("curl", &args);
    assert!(ran.succeeded(), "curl failed: {ran:#?}");
    assert!(
        ran.stdout.contains("served behind sslwrap"),
        "nginx's page did not arrive: {ran:#?}"
    );
    let line = ran
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("client="))
        .unwrap_or_else(|| panic!("curl did not report its address: {ran:#?}"));
    let (ip, local_port) = line.split_once(' ').unwrap();
    (ip.to_string(), local_port.trim().parse().unwrap())
}

/// sslwrap with `-proxy VERSION` in front of nginx; nginx's log must carry the client's address and port, and
/// sslwrap's listening address as the destination.
fn nginx_sees_the_client(name: &str, version: &str, mode: Mode, host: &str) {
    if host.contains(':') && !ipv6_loopback_available() {
        eprintln!("{name}: no IPv6 loopback on this machine; not run");
        return;
    }
    let s = setup(name);
    let nginx = Nginx::start(&s.dir);
    let line = s.legacy_line(nginx.port, &["-proxy", version]);
    let front = Front::start(mode, host, &as_strs(&line), &s.syslog);
    let (client_ip, client_port) = curl_through(host, front.port());
    let expected_ip = if host.contains(':') {
        "::1"
    } else {
        CLIENT_SOURCE
    };
    assert_eq!(
        client_ip, expected_ip,
        "curl did not use the intended source"
    );
    let logged = nginx.expect_log(&format!("ppport={client_port} "));
    assert!(
        logged.starts_with(&format!("pp={expected_ip} ppport={client_port} ")),
        "nginx saw another client: {logged}"
    );
    assert!(
        logged.contains(&format!("ppdst={host}:{} ", front.port())),
        "the header's destination is not sslwrap's listening address: {logged}"
    );
    assert!(
        logged.contains("peer=127.0.0.1 "),
        "the TCP peer is sslwrap: {logged}"
    );
    assert!(logged.ends_with("status=200"), "{logged}");
}

/// One nginx test a line: its name, then the arguments of `nginx_sees_the_client`.
macro_rules! nginx_tests {
    ($($test:ident => ($name:literal, $version:literal, $mode:ident, $host:literal);)*) => {
        $(
            #[test]
            fn $test() {
                nginx_sees_the_client($name, $version, Mode::$mode, $host);
            }
        )*
    };
}

nginx_tests! {
    nginx_logs_the_client_v1_inetd_ipv4 => ("px-v1-inetd-4", "v1", Inetd, "127.0.0.1");
    nginx_logs_the_client_v2_inetd_ipv4 => ("px-v2-inetd-4", "v2", Inetd, "127.0.0.1");
    nginx_logs_the_client_v1_daemon_ipv4 => ("px-v1-daemon-4", "v1", Daemon, "127.0.0.1");
    nginx_logs_the_client_v2_daemon_ipv4 => ("px-v2-daemon-4", "v2", Daemon, "127.0.0.1");
    nginx_logs_the_client_v1_inetd_ipv6 => ("px-v1-inetd-6", "v1", Inetd, "::1");
    nginx_logs_the_client_v2_inetd_ipv6 => ("px-v2-inetd-6", "v2", Inetd, "::1");
    nginx_logs_the_client_v1_daemon_ipv6 => ("px-v1-daemon-6", "v1", Daemon, "::1");
    nginx_logs_the_client_v2_daemon_ipv6 => ("px-v2-daemon-6", "v2", Daemon, "::1");
}

#[test]
fn bare_proxy_means_v2() {
    // nginx logs the same for both versions, so the header itself is read here: v2 starts with its signature.
    use std::io::Read;
    use std::sync::mpsc;
    static FIRST_BYTES: std::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>> =
        std::sync::Mutex::new(None);
    let (sender, receiver) = mpsc::channel();
    *FIRST_BYTES.lock().unwrap() = Some(sender);
    fn capture(mut stream: std::net::TcpStream) {
        let mut header = [0u8; 12];
        let _ = stream.read_exact(&mut header);
        let sender = FIRST_BYTES.lock().unwrap().clone().unwrap();
        let _ = sender.send(header.to_vec());
    }
    let s = setup("px-bare");
    let line = s.legacy_line(backend(capture), &["-proxy"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let _client = tls(inetd.port);
    let header = receiver
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("no header reached the backend");
    assert_eq!(header, b"\r\n\r\n\0\r\nQUIT\n", "not a PROXY v2 signature");
}

/// IMAP over implicit TLS from 127.0.0.5 through sslwrap to dovecot's PROXY listener, LOGIN with the right
/// password; returns the client's report.
fn login_from_second_address(
    name: &str,
    version: &str,
    mode: Mode,
) -> (Setup, Dovecot, Front, Ran) {
    let s = setup(name);
    let dovecot = Dovecot::start(&s.dir, true);
    let line = s.legacy_line(dovecot.imap_haproxy, &["-proxy", version]);
    let front = Front::start(mode, "127.0.0.1", &as_strs(&line), &s.syslog);
    let port = front.port().to_string();
    let ran = python_client(&[
        "imaps-login",
        &port,
        CLIENT_SOURCE,
        &dovecot.user,
        &dovecot.password,
    ]);
    assert!(ran.succeeded(), "client failed: {ran:#?}");
    (s, dovecot, front, ran)
}

/// Waits for dovecot's log line containing `needle`; it must name the client as the client saw itself (CLIENT_SOURCE
/// and the port the client reported).
fn expect_dovecot_saw_the_client(dovecot: &Dovecot, ran: &Ran, needle: &str) -> String {
    let client_port = ran.expect_field("local_port");
    let line = dovecot.expect_log(needle);
    assert!(
        line.contains(&format!("rip={CLIENT_SOURCE}, rport={client_port},")),
        "dovecot did not see the client: {line}"
    );
    line
}

#[test]
fn dovecot_with_proxy_v2_knows_the_session_is_tls_and_lets_the_login_in() {
    let (_s, dovecot, _front, ran) = login_from_second_address("px-dovecot-v2", "v2", Mode::Daemon);
    let reply = ran.expect_field("login_reply");
    assert!(
        reply.starts_with("a OK"),
        "LOGIN inside TLS refused: {ran:#?}\n{}",
        dovecot.log()
    );
    expect_dovecot_saw_the_client(&dovecot, &ran, "Login: user=<tester>");
}

#[test]
fn dovecot_with_proxy_v1_sees_no_tls_and_refuses_the_plaintext_login() {
    let (_s, dovecot, _front, ran) = login_from_second_address("px-dovecot-v1", "v1", Mode::Inetd);
    let reply = ran.expect_field("login_reply");
    assert!(
        reply.starts_with("a NO [PRIVACYREQUIRED]"),
        "a v1 header carries no TLS facts, so dovecot must refuse plaintext auth: {ran:#?}"
    );
    expect_dovecot_saw_the_client(&dovecot, &ran, "Plaintext authentication disabled");
    assert!(dovecot.logins().is_empty(), "{}", dovecot.log());
}

#[test]
fn dovecot_behind_required_starttls_with_proxy_logs_the_client_and_allows_the_tls_login() {
    let s = setup("px-starttls");
    // disable_plaintext_auth = yes: with STARTTLS required, the v2 header says TLS, so the login after STARTTLS is
    // accepted; it could never have come before TLS, because sslwrap refuses those itself.
    let dovecot = Dovecot::start(&s.dir, true);
    let line = s.legacy_line(dovecot.imap_haproxy, &["-starttls", "imap", "-proxy", "v2"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let ran = python_client(&[
        "imap",
        &inetd.port.to_string(),
        &dovecot.user,
        &dovecot.password,
        CLIENT_SOURCE,
    ]);
    assert!(ran.succeeded(), "imaplib failed: {ran:#?}");
    expect_dovecot_saw_the_client(&dovecot, &ran, "Login: user=<tester>");
}

/// Runs sslwrap with `line`: it must exit with status 1; returns the line it logged about `-proxy`.
fn refused_at_startup(syslog: &mut Syslog, line: &[&str]) -> String {
    let (status, stderr) = run_to_end(line, syslog);
    assert_eq!(status.code(), Some(1), "{line:?}: {stderr}");
    syslog.expect("-proxy")
}

#[test]
fn proxy_with_fd_is_a_startup_error() {
    let mut s = setup("px-fd");
    let line = [
        "-cert",
        s.pki.server_pem.to_str().unwrap(),
        "-fd",
        "3",
        "-proxy",
    ];
    // The message must say what is wrong: -proxy wants a TCP backend, which -fd is not.
    let logged = refused_at_startup(&mut s.syslog, &line);
    assert!(
        logged.contains("TCP backend") && logged.contains("-fd"),
        "{logged}"
    );
}

#[test]
fn proxy_with_exec_is_a_startup_error() {
    let mut s = setup("px-exec");
    for words in [
        ["-proxy", "v1", "-exec", "/bin/cat"],
        ["-proxy", "v2", "-exec", "/bin/cat"],
    ] {
        let mut line = vec!["-cert", s.pki.server_pem.to_str().unwrap()];
        line.extend(words);
        let logged = refused_at_startup(&mut s.syslog, &line);
        assert!(logged.contains("-exec"), "{logged}");
    }
}

/// A backend that reads the PROXY v2 header and sends it back, so the TLS client sees what the backend was told.
fn echo_the_v2_header(mut stream: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut fixed = [0u8; 16];
    if stream.read_exact(&mut fixed).is_err() {
        return;
    }
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    if stream.read_exact(&mut rest).is_ok() {
        let _ = stream.write_all(&[&fixed[..], &rest].concat());
    }
}

/// The top-level TLV of type `kind` in the v2 header the backend received for a client set up by `configure`
/// (IPv4, so 12 address bytes precede the TLVs), with sslwrap run with `-proxy v2` and `extra`.
fn tlv_sent(
    extra: &[&str],
    configure: impl FnOnce(&mut openssl::ssl::SslRef),
    kind: u8,
) -> Option<Vec<u8>> {
    use std::io::Read;
    let s = setup("px-tlv");
    let mut words = vec!["-proxy", "v2"];
    words.extend(extra);
    let line = s.legacy_line(backend(echo_the_v2_header), &words);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let connector = connector(|_| {});
    let mut ssl = openssl::ssl::Ssl::new(connector.context()).unwrap();
    configure(&mut ssl);
    let mut client = ssl.connect(tcp(inetd.port)).expect("handshake failed");
    let mut fixed = [0u8; 16];
    client.read_exact(&mut fixed).unwrap();
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    client.read_exact(&mut rest).unwrap();
    let mut tlvs = &rest[12..];
    while tlvs.len() >= 3 {
        let length = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs[0] == kind {
            return Some(tlvs[3..3 + length].to_vec());
        }
        tlvs = &tlvs[3 + length..];
    }
    None
}

/// The PP2_TYPE_AUTHORITY value sent for a client asking for `server_name`.
fn authority_sent_for(server_name: &str) -> Option<Vec<u8>> {
    tlv_sent(&[], |ssl| ssl.set_hostname(server_name).unwrap(), 0x02)
}

#[test]
fn the_server_name_reaches_the_backend_only_when_it_is_a_host_name() {
    assert_eq!(
        authority_sent_for("mail.example.org").as_deref(),
        Some(&b"mail.example.org"[..])
    );
    assert_eq!(authority_sent_for("nl\nx"), None);
    assert_eq!(authority_sent_for("a name with spaces"), None);
}

/// PP2_TYPE_ALPN.
const PP2_TYPE_ALPN: u8 = 0x01;

#[test]
fn the_agreed_application_protocol_reaches_the_backend_as_the_alpn_tlv() {
    let offering = |alpn: &'static [u8]| {
        move |ssl: &mut openssl::ssl::SslRef| ssl.set_alpn_protos(alpn).unwrap()
    };
    let alpn = ["-alpn", "h2,http/1.1"];
    assert_eq!(
        tlv_sent(&alpn, offering(b"\x08http/1.1\x02h2"), PP2_TYPE_ALPN).as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(
        tlv_sent(&alpn, offering(b"\x08http/1.1"), PP2_TYPE_ALPN).as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(tlv_sent(&alpn, |_| {}, PP2_TYPE_ALPN), None);
    assert_eq!(tlv_sent(&[], offering(b"\x02h2"), PP2_TYPE_ALPN), None);
}
