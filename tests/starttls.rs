//! `-starttls imap|pop3|smtp` end to end: the built binary, in inetd mode (the inetd stand-in) and daemon mode
//! (`-accept`), in front of real servers — a private dovecot for IMAP and POP3, Python's aiosmtpd for SMTP — and
//! driven by real clients: `openssl s_client -starttls`, curl, Python's imaplib/poplib/smtplib and gnutls-cli.
//! Raw-socket tests check what the RFCs and the project's STARTTLS notes require before TLS (capabilities,
//! refusals, which commands work) and that bytes pipelined after STARTTLS are never executed (CVE-2011-0411).
//! Scripted backends (played by the test) show what reached the backend before TLS and what sslwrap does when a
//! backend misbehaves. Every assertion is about what a client or a server observably got, or what sslwrap logged.

mod common;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use support::*;

/// How long the server must stay quiet after its STARTTLS reply to count as waiting for the ClientHello.
const SILENCE: Duration = Duration::from_millis(1500);
/// sslwrap's warning when it drops bytes that followed an accepted STARTTLS in the same read.
const DISCARDED: &str = "bytes sent after STARTTLS in plaintext were discarded";

/// sslwrap with `-starttls PROTO` in front of `backend_port`.
fn start_front(s: &Setup, mode: Mode, backend_port: u16, proto: &str) -> Front {
    let line = s.legacy_line(backend_port, &["-starttls", proto]);
    Front::start(mode, "127.0.0.1", &as_strs(&line), &s.syslog)
}

/// A private dovecot and sslwrap with `-starttls PROTO` in front of its IMAP or POP3 port (by `proto`).
fn dovecot_front(name: &str, mode: Mode, proto: &str) -> (Setup, Dovecot, Front) {
    dovecot_front_with(name, mode, proto, |s| Dovecot::start(&s.dir, false))
}

/// Like `dovecot_front`, but the dovecot offers STARTTLS/STLS itself.
fn own_starttls_dovecot_front(name: &str, mode: Mode, proto: &str) -> (Setup, Dovecot, Front) {
    dovecot_front_with(name, mode, proto, |s| {
        Dovecot::start_offering_starttls(&s.dir, &s.pki.server)
    })
}

fn dovecot_front_with(
    name: &str,
    mode: Mode,
    proto: &str,
    start: impl FnOnce(&Setup) -> Dovecot,
) -> (Setup, Dovecot, Front) {
    let s = setup(name);
    let dovecot = start(&s);
    let front = start_front(&s, mode, dovecot_port(&dovecot, proto), proto);
    (s, dovecot, front)
}

fn dovecot_port(dovecot: &Dovecot, proto: &str) -> u16 {
    if proto.starts_with("pop3") {
        dovecot.pop3
    } else {
        dovecot.imap
    }
}

/// An SMTP server and sslwrap with `-starttls smtp` in front of it.
fn smtp_front(name: &str, mode: Mode) -> (Setup, SmtpServer, Front) {
    let s = setup(name);
    let server = SmtpServer::start(&s.dir, &s.pki.server_pem);
    let front = start_front(&s, mode, server.port, "smtp");
    (s, server, front)
}

/// Python's imaplib or poplib (`proto` "imap" or "pop3") through `front` as dovecot's user; it must succeed.
fn python_mail_session(proto: &str, front: &Front, dovecot: &Dovecot) -> Ran {
    let port = front.port().to_string();
    let ran = python_client(&[proto, &port, &dovecot.user, &dovecot.password]);
    let library = if proto == "pop3" { "poplib" } else { "imaplib" };
    assert!(ran.succeeded(), "{library} failed: {ran:#?}");
    ran
}

/// curl with `--ssl-reqd` (and no certificate check) and `args`; it must succeed.
fn curl_ssl_reqd(args: &[&str]) -> Ran {
    let mut all = vec!["-sS", "--max-time", "30", "--ssl-reqd", "-k"];
    all.extend(args);
    let ran = run("curl", &all);
    assert!(ran.succeeded(), "curl failed: {ran:#?}");
    ran
}

/// curl logging in as dovecot's user at `url`; what it fetched must carry the planted message's Subject.
fn curl_fetches_the_planted_subject(dovecot: &Dovecot, url: &str) -> Ran {
    let credentials = format!("{}:{}", dovecot.user, dovecot.password);
    let ran = curl_ssl_reqd(&["-u", &credentials, url]);
    assert!(
        ran.stdout
            .contains(&format!("Subject: {}", dovecot.subject)),
        "{ran:#?}"
    );
    ran
}

/// `openssl s_client -starttls PROTO` through `front`, typing `input` (CRLF line ends) until `done_when` shows.
fn s_client_starttls(proto: &str, front: &Front, input: &str, done_when: &str) -> Ran {
    let address = format!("127.0.0.1:{}", front.port());
    converse(
        "openssl",
        &[
            "s_client",
            "-starttls",
            proto,
            "-connect",
            &address,
            "-quiet",
            "-crlf",
        ],
        input.as_bytes(),
        done_when,
    )
}

/// Sends `starttls` with `injected` right behind it in the same write, lets `check_reply` read and check the
/// STARTTLS reply, asserts the server then waits silently for the ClientHello, and completes the handshake.
fn starttls_with_injection(
    mut stream: std::net::TcpStream,
    starttls: &str,
    injected: &str,
    check_reply: impl FnOnce(&mut std::net::TcpStream),
) -> openssl::ssl::SslStream<std::net::TcpStream> {
    stream
        .write_all(format!("{starttls}\r\n{injected}").as_bytes())
        .unwrap();
    check_reply(&mut stream);
    assert_silent(&mut stream, SILENCE);
    start_tls(stream)
}

/// Sends one IMAP command and reads through its tagged reply.
fn imap_command(stream: &mut (impl Read + Write), tag: &str, command: &str) -> Vec<String> {
    stream
        .write_all(format!("{tag} {command}\r\n").as_bytes())
        .unwrap();
    read_until(stream, &format!("{tag} "))
}

/// The words of the untagged CAPABILITY response among `lines`, upper-cased.
fn capability_words(lines: &[String]) -> Vec<String> {
    let line = lines
        .iter()
        .find(|line| line.to_ascii_uppercase().starts_with("* CAPABILITY "))
        .unwrap_or_else(|| panic!("no CAPABILITY response in {lines:#?}"));
    words_upper(&line["* CAPABILITY ".len()..])
}

fn words_upper(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| {
            word.trim_matches(|c| c == '[' || c == ']')
                .to_ascii_uppercase()
        })
        .collect()
}

fn has(words: &[String], word: &str) -> bool {
    words.iter().any(|w| w == word)
}

fn last(lines: &[String]) -> &str {
    lines.last().map_or("", String::as_str)
}

/// Asserts the syslog got the injection warning naming exactly `count` dropped bytes.
fn expect_discard_warning(syslog: &mut Syslog, count: usize) {
    let line = syslog.expect(DISCARDED);
    assert!(
        line.contains(&format!("{count} {DISCARDED}")),
        "expected {count} discarded bytes: {line}"
    );
}

/// How a scripted backend answers one line it received (terminator included): bytes to send back, or None to close.
type Answer = fn(&[u8]) -> Option<Vec<u8>>;

/// A plaintext backend played by the test: each connection gets `greeting` (none: it stays silent), then every line
/// it receives is recorded and answered. `closed` reports each connection's end as sslwrap let it go.
struct ScriptedBackend {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    closed: Receiver<()>,
}

impl ScriptedBackend {
    fn start(greeting: Option<&'static [u8]>, answer: Answer) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (report, closed) = mpsc::channel();
        let record = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (record, report) = (record.clone(), report.clone());
                std::thread::spawn(move || {
                    serve_script(stream, greeting, answer, &record);
                    let _ = report.send(());
                });
            }
        });
        ScriptedBackend {
            port,
            received,
            closed,
        }
    }

    /// Waits (bounded) until sslwrap has let go of a backend connection.
    fn expect_closed(&self) {
        self.closed
            .recv_timeout(Duration::from_secs(30))
            .expect("sslwrap kept its backend connection open");
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_script(
    mut stream: TcpStream,
    greeting: Option<&[u8]>,
    answer: Answer,
    record: &Mutex<Vec<u8>>,
) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if let Some(greeting) = greeting {
        stream.write_all(greeting).unwrap();
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        record.lock().unwrap().push(byte[0]);
        line.push(byte[0]);
        if byte[0] != b'\n' {
            continue;
        }
        match answer(&line) {
            Some(reply) if stream.write_all(&reply).is_ok() => line.clear(),
            _ => return,
        }
    }
}

/// A minimal IMAP server: every command gets a tagged OK, LOGOUT a BYE first.
fn imap_answer(line: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let tag = words.next().unwrap_or("*");
    if words
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("LOGOUT"))
    {
        return Some(format!("* BYE fake\r\n{tag} OK done\r\n").into_bytes());
    }
    Some(format!("{tag} OK done\r\n").into_bytes())
}

/// sslwrap with `-starttls PROTO` and `extra` in front of a scripted backend.
fn scripted_front(s: &Setup, backend: &ScriptedBackend, proto: &str, extra: &[&str]) -> Front {
    let mut args = vec!["-starttls", proto];
    args.extend(extra);
    let line = s.legacy_line(backend.port, &args);
    Front::start(Mode::Inetd, "127.0.0.1", &as_strs(&line), &s.syslog)
}

/// Reads whatever comes until the server closes (or resets) the connection, bounded by the stream's read timeout.
fn read_to_end_of_connection(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return data,
            Ok(count) => data.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return data,
            Err(error) => panic!("reading to the end: {error}; got {data:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// IMAP

/// Python's imaplib: capabilities before and after STARTTLS, login, select, fetch of the planted message.
fn imaplib_session(name: &str, mode: Mode) {
    let (_s, dovecot, front) = dovecot_front(name, mode, "imap");
    let ran = python_mail_session("imap", &front, &dovecot);
    let before = words_upper(ran.expect_field("caps_before"));
    assert!(has(&before, "STARTTLS"), "before TLS: {before:?}");
    assert!(has(&before, "LOGINDISABLED"), "before TLS: {before:?}");
    let after = words_upper(ran.expect_field("caps_after"));
    assert!(!has(&after, "STARTTLS"), "after TLS: {after:?}");
    assert!(!has(&after, "LOGINDISABLED"), "after TLS: {after:?}");
    assert!(ran.expect_field("tls").starts_with("TLSv1."));
    assert_eq!(ran.expect_field("login"), "OK");
    assert_eq!(ran.expect_field("exists"), "1");
    assert_eq!(
        ran.expect_field("subject"),
        format!("Subject: {}", dovecot.subject)
    );
    dovecot.expect_log("Login: user=<tester>");
}

#[test]
fn imap_python_imaplib_starttls_login_select_fetch_inetd() {
    imaplib_session("imap-py-inetd", Mode::Inetd);
}

#[test]
fn imap_python_imaplib_starttls_login_select_fetch_daemon() {
    imaplib_session("imap-py-daemon", Mode::Daemon);
}

#[test]
fn imap_backend_own_starttls_is_replaced_before_tls_and_stripped_after() {
    let (_s, dovecot, front) = own_starttls_dovecot_front("imap-own-tls", Mode::Inetd, "imap");
    let ran = python_mail_session("imap", &front, &dovecot);
    let before = words_upper(ran.expect_field("caps_before"));
    assert_eq!(
        before.iter().filter(|word| *word == "STARTTLS").count(),
        1,
        "sslwrap's STARTTLS replaces the backend's: {before:?}"
    );
    let after = words_upper(ran.expect_field("caps_after"));
    assert!(
        !has(&after, "STARTTLS"),
        "the backend's STARTTLS must be stripped after TLS: {after:?}"
    );
    assert_eq!(ran.expect_field("exists"), "1");
}

#[test]
fn imap_curl_ssl_reqd_fetches_the_planted_message() {
    let (_s, dovecot, front) = dovecot_front("imap-curl", Mode::Daemon, "imap");
    let url = format!("imap://127.0.0.1:{}/INBOX/;UID=1", front.port());
    let ran = curl_fetches_the_planted_subject(&dovecot, &url);
    assert!(ran.stdout.contains("planted by the test"), "{ran:#?}");
}

#[test]
fn imap_openssl_s_client_starttls_then_login_and_select() {
    let (_s, dovecot, front) = dovecot_front("imap-sclient", Mode::Inetd, "imap");
    let input = format!(
        "b CAPABILITY\nc LOGIN {} {}\nd SELECT INBOX\ne LOGOUT\n",
        dovecot.user, dovecot.password
    );
    let ran = s_client_starttls("imap", &front, &input, "e OK");
    let lines: Vec<String> = ran.stdout.lines().map(str::to_string).collect();
    let caps = capability_words(&lines);
    assert!(!has(&caps, "STARTTLS"), "after TLS: {caps:?}");
    assert!(ran.stdout.contains("c OK"), "{ran:#?}");
    assert!(ran.stdout.contains("* 1 EXISTS"), "{ran:#?}");
    assert!(ran.stdout.contains("e OK"), "{ran:#?}");
}

#[test]
fn imap_gnutls_cli_starttls_then_login_and_fetch() {
    let (_s, dovecot, front) = dovecot_front("imap-gnutls", Mode::Daemon, "imap");
    let port = front.port().to_string();
    let input = format!(
        "b LOGIN {} {}\r\nc SELECT INBOX\r\nd FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\ne LOGOUT\r\n",
        dovecot.user, dovecot.password
    );
    let ran = converse(
        "gnutls-cli",
        &[
            "--starttls-proto=imap",
            "--insecure",
            "--port",
            &port,
            "127.0.0.1",
        ],
        input.as_bytes(),
        "e OK",
    );
    assert!(ran.stdout.contains("b OK"), "{ran:#?}");
    assert!(
        ran.stdout
            .contains(&format!("Subject: {}", dovecot.subject)),
        "{ran:#?}"
    );
    assert!(ran.stdout.contains("e OK"), "{ran:#?}");
}

#[test]
fn imap_capability_thrice_noop_and_id_before_starttls_then_tls_works() {
    let (_s, dovecot, front) = dovecot_front("imap-before", Mode::Inetd, "imap");
    let mut stream = tcp(front.port());
    let greeting = read_line(&mut stream).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    // Dovecot's greeting carries a [CAPABILITY ...] code: it is a capability list the client sees before TLS.
    let greeting_words = words_upper(&greeting);
    assert!(has(&greeting_words, "STARTTLS"), "{greeting}");
    assert!(has(&greeting_words, "LOGINDISABLED"), "{greeting}");
    assert!(
        !greeting_words.iter().any(|w| w.starts_with("AUTH=")),
        "no SASL mechanism may be offered before TLS: {greeting}"
    );
    for tag in ["c1", "c2", "c3"] {
        let reply = imap_command(&mut stream, tag, "CAPABILITY");
        let caps = capability_words(&reply);
        assert!(
            has(&caps, "STARTTLS") && has(&caps, "LOGINDISABLED"),
            "{reply:?}"
        );
        assert!(last(&reply).starts_with(&format!("{tag} OK")), "{reply:?}");
    }
    let noop = imap_command(&mut stream, "n", "NOOP");
    assert!(last(&noop).starts_with("n OK"), "{noop:?}");
    let id = imap_command(&mut stream, "i", "ID NIL");
    assert!(
        id.iter().any(|line| line.starts_with("* ID ")),
        "dovecot's ID reply: {id:?}"
    );
    assert!(last(&id).starts_with("i OK"), "{id:?}");
    let starttls = imap_command(&mut stream, "s", "STARTTLS");
    assert_eq!(starttls, ["s OK Begin TLS negotiation now\r\n"]);
    let mut tls = start_tls(stream);
    let caps_after = imap_command(&mut tls, "t", "CAPABILITY");
    let caps = capability_words(&caps_after);
    assert!(!has(&caps, "STARTTLS"), "after TLS: {caps_after:?}");
    assert!(!has(&caps, "LOGINDISABLED"), "after TLS: {caps_after:?}");
    let login = imap_command(
        &mut tls,
        "l",
        &format!("LOGIN {} {}", dovecot.user, dovecot.password),
    );
    assert!(last(&login).starts_with("l OK"), "{login:?}");
    let select = imap_command(&mut tls, "x", "SELECT INBOX");
    assert!(
        select.iter().any(|line| line == "* 1 EXISTS\r\n"),
        "{select:?}"
    );
    let logout = imap_command(&mut tls, "z", "LOGOUT");
    assert!(last(&logout).starts_with("z OK"), "{logout:?}");
}

#[test]
fn imap_login_before_starttls_is_refused_and_never_reaches_dovecot() {
    let (_s, dovecot, front) = dovecot_front("imap-nologin", Mode::Inetd, "imap");
    let mut stream = tcp(front.port());
    read_line(&mut stream).unwrap();
    // The right password: if the LOGIN reached dovecot (which allows plaintext here) it would succeed.
    let login = imap_command(
        &mut stream,
        "a",
        &format!("LOGIN {} {}", dovecot.user, dovecot.password),
    );
    assert!(
        last(&login).starts_with("a NO [PRIVACYREQUIRED]"),
        "{login:?}"
    );
    let authenticate = imap_command(&mut stream, "b", "AUTHENTICATE PLAIN");
    assert!(
        last(&authenticate).starts_with("b NO [PRIVACYREQUIRED]"),
        "{authenticate:?}"
    );
    let logout = imap_command(&mut stream, "c", "LOGOUT");
    assert!(last(&logout).starts_with("c OK"), "{logout:?}");
    // Dovecot's own account of the session: it ended without a single authentication attempt.
    let ended = dovecot.expect_log("Disconnected");
    assert!(ended.contains("no auth attempts"), "{ended}");
    assert!(
        dovecot.logins().is_empty(),
        "dovecot logged a login: {}",
        dovecot.log()
    );
}

#[test]
fn imap_optional_mode_lets_a_plaintext_login_through_to_dovecot() {
    let (_s, dovecot, front) = dovecot_front("imap-optional", Mode::Inetd, "imap-");
    let mut stream = tcp(front.port());
    let greeting = read_line(&mut stream).unwrap();
    let caps = imap_command(&mut stream, "a", "CAPABILITY");
    let words = capability_words(&caps);
    assert!(has(&words, "STARTTLS"), "TLS is still offered: {caps:?}");
    assert!(
        !has(&words, "LOGINDISABLED"),
        "optional mode must not forbid LOGIN: {greeting} {caps:?}"
    );
    let login = imap_command(
        &mut stream,
        "b",
        &format!("LOGIN {} {}", dovecot.user, dovecot.password),
    );
    assert!(last(&login).starts_with("b OK"), "{login:?}");
    let select = imap_command(&mut stream, "c", "SELECT INBOX");
    assert!(
        select.iter().any(|line| line == "* 1 EXISTS\r\n"),
        "{select:?}"
    );
    imap_command(&mut stream, "d", "LOGOUT");
    dovecot.expect_log("Login: user=<tester>");
}

#[test]
fn imap_login_pipelined_after_starttls_is_discarded_not_executed() {
    let (mut s, dovecot, front) = dovecot_front("imap-inject", Mode::Inetd, "imap");
    let mut stream = tcp(front.port());
    read_line(&mut stream).unwrap();
    // Real credentials: were the injected LOGIN executed, dovecot would log the user in.
    let injected = format!("b LOGIN {} {}\r\n", dovecot.user, dovecot.password);
    let mut tls = starttls_with_injection(stream, "a STARTTLS", &injected, |stream| {
        let reply = read_until(stream, "a ");
        assert!(last(&reply).starts_with("a OK"), "{reply:?}");
    });
    let caps = imap_command(&mut tls, "c", "CAPABILITY");
    let select = imap_command(&mut tls, "d", "SELECT INBOX");
    imap_command(&mut tls, "e", "LOGOUT");
    for line in caps.iter().chain(&select) {
        assert!(
            !line.starts_with("b "),
            "the injected command got a reply: {line}"
        );
    }
    assert!(
        !last(&select).starts_with("d OK"),
        "SELECT worked, so the injected LOGIN ran: {select:?}"
    );
    expect_discard_warning(&mut s.syslog, injected.len());
    assert!(
        dovecot.logins().is_empty(),
        "dovecot logged a login: {}",
        dovecot.log()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// POP3

#[test]
fn pop3_python_poplib_stls_then_retr_inetd() {
    let (_s, dovecot, front) = dovecot_front("pop3-py", Mode::Inetd, "pop3");
    let ran = python_mail_session("pop3", &front, &dovecot);
    let before = words_upper(ran.expect_field("capa_before"));
    assert!(has(&before, "STLS"), "{before:?}");
    assert!(
        !has(&before, "USER"),
        "USER is not permitted before TLS: {before:?}"
    );
    let after = words_upper(ran.expect_field("capa_after"));
    assert!(!has(&after, "STLS"), "after TLS: {after:?}");
    assert_eq!(ran.expect_field("stat"), "1");
    assert_eq!(
        ran.expect_field("subject"),
        format!("Subject: {}", dovecot.subject)
    );
    dovecot.expect_log("Login: user=<tester>");
}

#[test]
fn pop3_backend_own_stls_is_stripped_after_tls() {
    let (_s, dovecot, front) = own_starttls_dovecot_front("pop3-own-tls", Mode::Daemon, "pop3");
    let ran = python_mail_session("pop3", &front, &dovecot);
    let after = words_upper(ran.expect_field("capa_after"));
    assert!(
        !has(&after, "STLS"),
        "the backend's STLS must be stripped after TLS: {after:?}"
    );
    assert_eq!(ran.expect_field("stat"), "1");
}

#[test]
fn pop3_curl_ssl_reqd_retrieves_the_message_daemon() {
    let (_s, dovecot, front) = dovecot_front("pop3-curl", Mode::Daemon, "pop3");
    let url = format!("pop3://127.0.0.1:{}/1", front.port());
    curl_fetches_the_planted_subject(&dovecot, &url);
}

#[test]
fn pop3_openssl_s_client_stls_then_user_pass_stat() {
    let (_s, dovecot, front) = dovecot_front("pop3-sclient", Mode::Inetd, "pop3");
    let input = format!(
        "CAPA\nUSER {}\nPASS {}\nSTAT\nQUIT\n",
        dovecot.user, dovecot.password
    );
    let ran = s_client_starttls("pop3", &front, &input, "Logging out");
    assert!(ran.stdout.contains("+OK Logged in"), "{ran:#?}");
    assert!(ran.stdout.contains("+OK 1 "), "STAT: {ran:#?}");
    let capa: Vec<&str> = ran.stdout.lines().map(str::trim_end).collect();
    assert!(
        !capa.contains(&"STLS"),
        "CAPA after TLS lists STLS: {ran:#?}"
    );
}

#[test]
fn pop3_before_stls_capa_offers_stls_and_user_is_refused() {
    let (_s, dovecot, front) = dovecot_front("pop3-before", Mode::Daemon, "pop3");
    let mut stream = tcp(front.port());
    assert!(read_line(&mut stream).unwrap().starts_with("+OK"));
    stream.write_all(b"CAPA\r\n").unwrap();
    let capa = read_until(&mut stream, ".\r\n");
    assert!(capa[0].starts_with("+OK"), "{capa:?}");
    assert!(capa.iter().any(|line| line == "STLS\r\n"), "{capa:?}");
    stream
        .write_all(format!("USER {}\r\n", dovecot.user).as_bytes())
        .unwrap();
    let refused = read_line(&mut stream).unwrap();
    assert!(refused.starts_with("-ERR"), "{refused}");
    stream.write_all(b"STLS\r\n").unwrap();
    assert_eq!(
        read_line(&mut stream).unwrap(),
        "+OK Begin TLS negotiation\r\n"
    );
    let mut tls = start_tls(stream);
    tls.write_all(format!("USER {}\r\nPASS {}\r\n", dovecot.user, dovecot.password).as_bytes())
        .unwrap();
    assert!(read_line(&mut tls).unwrap().starts_with("+OK"));
    let logged_in = read_line(&mut tls).unwrap();
    assert!(logged_in.starts_with("+OK"), "{logged_in}");
    tls.write_all(b"QUIT\r\n").unwrap();
    read_line(&mut tls).unwrap();
    assert_eq!(
        dovecot.logins().len(),
        1,
        "exactly the login inside TLS: {}",
        dovecot.log()
    );
}

#[test]
fn pop3_user_pipelined_after_stls_is_discarded_not_executed() {
    let (mut s, dovecot, front) = dovecot_front("pop3-inject", Mode::Daemon, "pop3");
    let mut stream = tcp(front.port());
    read_line(&mut stream).unwrap();
    let injected = format!("USER {}\r\n", dovecot.user);
    let mut tls = starttls_with_injection(stream, "STLS", &injected, |stream| {
        assert_eq!(read_line(stream).unwrap(), "+OK Begin TLS negotiation\r\n");
    });
    // PASS only works after a USER: dovecot accepting it would prove the injected USER ran inside TLS.
    tls.write_all(format!("PASS {}\r\n", dovecot.password).as_bytes())
        .unwrap();
    let pass = read_line(&mut tls).unwrap();
    assert!(
        pass.starts_with("-ERR"),
        "PASS was accepted, so the injected USER ran: {pass}"
    );
    tls.write_all(b"QUIT\r\n").unwrap();
    let rest = read_rest(&mut tls);
    assert_eq!(
        rest.lines().count(),
        1,
        "one reply (to QUIT) expected: {rest:?}"
    );
    expect_discard_warning(&mut s.syslog, injected.len());
    assert!(dovecot.logins().is_empty(), "{}", dovecot.log());
}

// ---------------------------------------------------------------------------------------------------------------
// SMTP

/// The keywords of an EHLO reply (`250-KEYWORD` / `250 KEYWORD` lines after the first), upper-cased.
fn ehlo_keywords(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .skip(1)
        .filter(|line| line.starts_with("250"))
        .filter_map(|line| line.get(4..))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_ascii_uppercase)
        .collect()
}

fn smtp_command(stream: &mut (impl Read + Write), command: &str) -> Vec<String> {
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .unwrap();
    read_smtp_reply(stream)
}

/// Reads one (possibly multi-line) SMTP reply: lines until one whose fourth byte is a space.
fn read_smtp_reply(stream: &mut impl Read) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = read_line(stream)
            .unwrap_or_else(|e| panic!("reading an SMTP reply: {e}; so far {lines:?}"));
        let done = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[test]
fn smtp_python_smtplib_starttls_sendmail_arrives_inetd() {
    let (_s, server, front) = smtp_front("smtp-py", Mode::Inetd);
    let port = front.port().to_string();
    let subject = format!("smtplib through sslwrap {}", token());
    let ran = python_client(&[
        "smtp",
        &port,
        "sender@example.org",
        "rcpt@example.org",
        &subject,
    ]);
    assert!(ran.succeeded(), "smtplib failed: {ran:#?}");
    let before = words_upper(ran.expect_field("ehlo_before"));
    assert!(has(&before, "STARTTLS"), "{before:?}");
    let after = words_upper(ran.expect_field("ehlo_after"));
    assert!(!has(&after, "STARTTLS"), "after TLS: {after:?}");
    assert_eq!(ran.expect_field("refused"), "{}");
    let message = server
        .wait_for_message(&subject, Duration::from_secs(20))
        .expect("the message never reached the SMTP server's store");
    assert!(message.contains("Sent by smtplib through sslwrap"));
}

#[test]
fn smtp_curl_ssl_reqd_upload_arrives_daemon() {
    let (s, server, front) = smtp_front("smtp-curl", Mode::Daemon);
    let subject = format!("curl through sslwrap {}", token());
    let message = s.dir.path("message.txt");
    std::fs::write(
        &message,
        format!(
            "From: <sender@example.org>\r\nTo: <rcpt@example.org>\r\nSubject: {subject}\r\n\r\nUploaded by curl.\r\n"
        ),
    )
    .unwrap();
    let url = format!("smtp://127.0.0.1:{}/client.example", front.port());
    curl_ssl_reqd(&[
        "--mail-from",
        "sender@example.org",
        "--mail-rcpt",
        "rcpt@example.org",
        "--upload-file",
        message.to_str().unwrap(),
        &url,
    ]);
    let stored = server
        .wait_for_message(&subject, Duration::from_secs(20))
        .expect("the message never reached the SMTP server's store");
    assert!(stored.contains("Uploaded by curl."));
}

#[test]
fn smtp_openssl_s_client_starttls_ehlo_has_no_starttls_and_mail_arrives() {
    let (_s, server, front) = smtp_front("smtp-sclient", Mode::Inetd);
    let subject = format!("s_client through sslwrap {}", token());
    let input = format!(
        "EHLO client.example\nMAIL FROM:<sender@example.org>\nRCPT TO:<rcpt@example.org>\nDATA\n\
         Subject: {subject}\n\nTyped into s_client.\n.\nQUIT\n"
    );
    let ran = s_client_starttls("smtp", &front, &input, "221");
    assert!(ran.stdout.contains("250"), "{ran:#?}");
    assert!(
        !ran.stdout.to_ascii_uppercase().contains("STARTTLS"),
        "an EHLO reply after TLS offered STARTTLS: {ran:#?}"
    );
    server
        .wait_for_message(&subject, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the message never arrived; client saw {ran:#?}"));
}

#[test]
fn smtp_before_tls_ehlo_offers_starttls_mail_gets_530_then_tls_delivers() {
    let (_s, server, front) = smtp_front("smtp-before", Mode::Daemon);
    let mut stream = tcp(front.port());
    let greeting = read_smtp_reply(&mut stream);
    assert!(last(&greeting).starts_with("220 "), "{greeting:?}");
    let ehlo = smtp_command(&mut stream, "EHLO client.example");
    assert!(last(&ehlo).starts_with("250 "), "{ehlo:?}");
    assert!(
        has(&ehlo_keywords(&ehlo), "STARTTLS"),
        "EHLO before TLS: {ehlo:?}"
    );
    let mail = smtp_command(&mut stream, "MAIL FROM:<sender@example.org>");
    assert_eq!(mail, ["530 5.7.0 Must issue a STARTTLS command first\r\n"]);
    let rcpt = smtp_command(&mut stream, "RCPT TO:<rcpt@example.org>");
    assert!(last(&rcpt).starts_with("530"), "{rcpt:?}");
    let data = smtp_command(&mut stream, "DATA");
    assert!(last(&data).starts_with("530"), "{data:?}");
    let starttls = smtp_command(&mut stream, "STARTTLS");
    assert_eq!(starttls, ["220 2.0.0 Ready to start TLS\r\n"]);
    let mut tls = start_tls(stream);
    let ehlo_after = smtp_command(&mut tls, "EHLO client.example");
    assert!(last(&ehlo_after).starts_with("250 "), "{ehlo_after:?}");
    assert!(
        !has(&ehlo_keywords(&ehlo_after), "STARTTLS"),
        "EHLO after TLS: {ehlo_after:?}"
    );
    let subject = format!("raw SMTP through sslwrap {}", token());
    for (command, code) in [
        ("MAIL FROM:<sender@example.org>", "250"),
        ("RCPT TO:<rcpt@example.org>", "250"),
        ("DATA", "354"),
    ] {
        let reply = smtp_command(&mut tls, command);
        assert!(last(&reply).starts_with(code), "{command}: {reply:?}");
    }
    let stored = smtp_command(
        &mut tls,
        &format!("Subject: {subject}\r\n\r\nWritten by hand.\r\n."),
    );
    assert!(last(&stored).starts_with("250"), "{stored:?}");
    let quit = smtp_command(&mut tls, "QUIT");
    assert!(last(&quit).starts_with("221"), "{quit:?}");
    server
        .wait_for_message(&subject, Duration::from_secs(20))
        .expect("the message never reached the SMTP server's store");
}

#[test]
fn smtp_rset_pipelined_after_starttls_is_discarded_not_executed() {
    let (mut s, _server, front) = smtp_front("smtp-inject", Mode::Inetd);
    let mut stream = tcp(front.port());
    read_smtp_reply(&mut stream);
    smtp_command(&mut stream, "EHLO client.example");
    let injected = "RSET\r\n";
    let mut tls = starttls_with_injection(stream, "STARTTLS", injected, |stream| {
        assert_eq!(
            read_smtp_reply(stream),
            ["220 2.0.0 Ready to start TLS\r\n"]
        );
    });
    // Had RSET run inside TLS, its 250 would come before QUIT's 221.
    tls.write_all(b"QUIT\r\n").unwrap();
    let rest = read_rest(&mut tls);
    let replies: Vec<&str> = rest.lines().collect();
    assert_eq!(replies.len(), 1, "only QUIT's reply expected: {rest:?}");
    assert!(replies[0].starts_with("221"), "{rest:?}");
    expect_discard_warning(&mut s.syslog, injected.len());
}

// ---------------------------------------------------------------------------------------------------------------
// Limits before TLS, with scripted backends

#[test]
fn imap_commands_with_literals_too_large_never_reach_the_backend() {
    let mut s = setup("imap-literals");
    let backend = ScriptedBackend::start(Some(b"* OK fake IMAP\r\n"), imap_answer);
    // A session the client ends by breaking a limit is logged at debug level only.
    let front = scripted_front(&s, &backend, "imap", &["-debug"]);
    let mut stream = tcp(front.port());
    assert_eq!(read_line(&mut stream).unwrap(), "* OK fake IMAP\r\n");
    // Too many digits for any number: still a literal, so refused; it used to be forwarded as a plain NOOP.
    let refused = imap_command(&mut stream, "a1", "NOOP {99999999999999999999}");
    assert_eq!(
        refused,
        ["a1 BAD Literals are not accepted before STARTTLS\r\n"]
    );
    let forwarded = imap_command(&mut stream, "a2", "NOOP");
    assert_eq!(forwarded, ["a2 OK done\r\n"]);
    // A non-synchronising literal beyond RFC 7888's LITERAL- limit cannot be skipped: the session ends unread.
    stream
        .write_all(b"a3 NOOP {18446744073709551615+}\r\nxxxx")
        .unwrap();
    let rest = read_to_end_of_connection(&mut stream);
    assert_eq!(rest, b"* BYE Literal too large before STARTTLS\r\n");
    s.syslog
        .expect("client announced a literal of more than 4096 bytes before TLS");
    backend.expect_closed();
    assert_eq!(
        String::from_utf8_lossy(&backend.received()),
        "a2 NOOP\r\n",
        "only the literal-free NOOP may reach the backend"
    );
}

#[test]
fn a_client_trickling_bytes_is_cut_off_by_the_time_limit_before_tls() {
    let mut s = setup("trickle");
    let backend = ScriptedBackend::start(Some(b"* OK fake IMAP\r\n"), imap_answer);
    // No -timeout: the idle limit is then the default 12 hours, so only the total limit can end this session in the loop.
    let front = scripted_front(&s, &backend, "imap", &["-handshake_timeout", "3"]);
    let mut stream = tcp(front.port());
    assert_eq!(read_line(&mut stream).unwrap(), "* OK fake IMAP\r\n");
    // One byte of a never-ending command line each time a short wait for a reply passes: never idle.
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut received = Vec::new();
    let mut closed = false;
    let mut buffer = [0u8; 256];
    for _ in 0..240 {
        if stream.write_all(b"x").is_err() {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(count) => received.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A byte sent after sslwrap closed is answered with a reset.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(error) => panic!("while trickling: {error}; got {received:?}"),
        }
    }
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if !closed {
        received.extend(read_to_end_of_connection(&mut stream));
    }
    assert_eq!(
        String::from_utf8_lossy(&received),
        "* BYE Timeout waiting for STARTTLS\r\n"
    );
    s.syslog.expect("TLS not established within 3 s, closed");
    backend.expect_closed();
    assert!(
        backend.received().is_empty(),
        "nothing of the unfinished line may reach the backend"
    );
}

#[test]
fn a_backend_that_never_greets_gets_the_client_the_protocols_farewell() {
    for (proto, farewell) in [
        ("imap", "* BYE Server unavailable\r\n"),
        ("pop3", "-ERR Server unavailable\r\n"),
        (
            "smtp",
            "421 4.3.0 Service not available, closing connection\r\n",
        ),
    ] {
        let mut s = setup(&format!("silent-{proto}"));
        let backend = ScriptedBackend::start(None, imap_answer);
        let front = scripted_front(&s, &backend, proto, &["-handshake_timeout", "2"]);
        let mut stream = tcp(front.port());
        let said = read_to_end_of_connection(&mut stream);
        assert_eq!(String::from_utf8_lossy(&said), farewell, "{proto}");
        s.syslog.expect("backend sent no greeting within 2 s");
        backend.expect_closed();
    }
}

#[test]
fn a_backend_that_closes_before_its_greeting_gets_the_client_the_protocols_farewell() {
    let mut s = setup("early-eof");
    let front = start_front(&s, Mode::Inetd, backend(drop), "smtp");
    let mut stream = tcp(front.port());
    let said = read_to_end_of_connection(&mut stream);
    assert_eq!(
        String::from_utf8_lossy(&said),
        "421 4.3.0 Service not available, closing connection\r\n"
    );
    s.syslog
        .expect("backend closed the connection before sending its greeting");
}

/// A multi-line reply to a command sslwrap knows nothing about (Qpopper's XTND XLST), with lines that look like a
/// status and like capabilities.
const XTND_LISTING: &[u8] =
    b"+OK list follows\r\n+OK quoted from a POP3 log\r\nSTLS\r\nSTARTTLS\r\n.\r\n";

/// A minimal POP3 server with CAPA (offering STLS itself), XTND XLST and QUIT.
fn pop3_answer(line: &[u8]) -> Option<Vec<u8>> {
    let command = String::from_utf8_lossy(line)
        .trim_end()
        .to_ascii_uppercase();
    let reply: &[u8] = match command.as_str() {
        "CAPA" => b"+OK\r\nSTLS\r\nUSER\r\n.\r\n",
        "XTND XLST" => XTND_LISTING,
        "QUIT" => b"+OK bye\r\n",
        _ => b"-ERR unknown command\r\n",
    };
    Some(reply.to_vec())
}

#[test]
fn pop3_after_stls_only_the_first_capa_reply_loses_stls_and_other_replies_pass_unaltered() {
    let s = setup("pop3-first-capa");
    let backend = ScriptedBackend::start(Some(b"+OK fake POP3\r\n"), pop3_answer);
    let front = scripted_front(&s, &backend, "pop3", &[]);
    let mut stream = tcp(front.port());
    assert_eq!(read_line(&mut stream).unwrap(), "+OK fake POP3\r\n");
    stream.write_all(b"STLS\r\n").unwrap();
    assert_eq!(
        read_line(&mut stream).unwrap(),
        "+OK Begin TLS negotiation\r\n"
    );
    let mut tls = start_tls(stream);
    tls.write_all(b"CAPA\r\nXTND XLST\r\nCAPA\r\nQUIT\r\n")
        .unwrap();
    let replies = read_until(&mut tls, "+OK bye").concat();
    let expected = [
        &b"+OK\r\nUSER\r\n.\r\n"[..],
        XTND_LISTING,
        b"+OK\r\nSTLS\r\nUSER\r\n.\r\n+OK bye\r\n",
    ]
    .concat();
    assert_eq!(replies, String::from_utf8_lossy(&expected));
}
