//! `-alpn LIST` end to end (issue 15, item 6): the built binary agrees on an application protocol by its own order of
//! preference with `openssl s_client`, refuses a client that offers none of the list with the no_application_protocol
//! alert and a log line saying why, lets a client without ALPN through, hands the agreed protocol to an `-exec`
//! program, applies to the handshake after STARTTLS, and carries curl's HTTP/2 to an nginx speaking HTTP/2 in
//! cleartext. Bad lists are start-up errors naming `-alpn`. (The PROXY v2 ALPN entry is tested in proxy.rs.)

mod common;
mod support;

use std::io::{Read, Write};

use common::*;
use support::*;

/// `openssl s_client` offering `alpn` (or no ALPN at all) to `port`, until its handshake summary shows or it fails;
/// returns what it printed.
fn s_client(port: u16, alpn: Option<&str>) -> Ran {
    let address = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &address];
    if let Some(list) = alpn {
        args.extend(["-alpn", list]);
    }
    converse("openssl", &args, b"", "ALPN")
}

/// The `ALPN protocol: NAME` or `No ALPN negotiated` line of an s_client summary.
fn alpn_line(ran: &Ran) -> &str {
    ran.stdout
        .lines()
        .find(|line| line.starts_with("ALPN protocol: ") || *line == "No ALPN negotiated")
        .unwrap_or_else(|| panic!("s_client printed no ALPN line: {ran:#?}"))
}

#[test]
fn s_client_gets_the_first_protocol_of_the_list_that_it_offers() {
    let mut s = setup("alpn-choice");
    let line = s.legacy_line(backend(echo), &["-alpn", "h2,http/1.1", "-debug"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    assert_eq!(
        alpn_line(&s_client(inetd.port, Some("h2"))),
        "ALPN protocol: h2"
    );
    // The server's order decides, not the client's.
    assert_eq!(
        alpn_line(&s_client(inetd.port, Some("http/1.1,h2"))),
        "ALPN protocol: h2"
    );
    assert_eq!(
        alpn_line(&s_client(inetd.port, Some("spdy/3,http/1.1"))),
        "ALPN protocol: http/1.1"
    );
    let logged = s.syslog.expect("established, ALPN h2");
    assert!(logged.contains("TLSv1.3"), "{logged}");
    s.syslog.expect("established, ALPN http/1.1");
}

#[test]
fn a_client_offering_none_of_the_list_gets_no_application_protocol_and_the_log_says_why() {
    let mut s = setup("alpn-refused");
    let line = s.legacy_line(backend(echo), &["-alpn", "http/1.1"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let ran = s_client(inetd.port, Some("h2"));
    // RFC 7301, section 3.2: alert 120, no_application_protocol.
    assert!(
        ran.stderr.contains("no application protocol") && ran.stderr.contains("alert number 120"),
        "s_client did not report the no_application_protocol alert: {ran:#?}"
    );
    assert!(!ran.stdout.contains("ALPN protocol:"), "{ran:#?}");
    let logged = s.syslog.expect("TLS handshake with 127.0.0.1:");
    assert!(
        logged.ends_with(
            "failed: no application protocol (the client offers ALPN \"h2\", none of -alpn http/1.1)"
        ),
        "{logged}"
    );
    assert!(
        inetd
            .wait_children()
            .iter()
            .all(|status| status.code() == Some(1)),
        "a refused handshake is a failed session"
    );
}

#[test]
fn a_client_offering_no_alpn_goes_on_without_it() {
    let mut s = setup("alpn-none");
    let line = s.legacy_line(backend(echo), &["-alpn", "h2,http/1.1", "-debug"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    assert_eq!(alpn_line(&s_client(inetd.port, None)), "No ALPN negotiated");
    let mut client = tls(inetd.port);
    assert_eq!(client.ssl().selected_alpn_protocol(), None);
    client.write_all(b"no ALPN here").unwrap();
    let mut echoed = [0u8; 12];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"no ALPN here");
    let established = s.syslog.expect(" established");
    assert!(!established.contains("ALPN"), "{established}");
}

#[test]
fn without_alpn_a_client_offering_it_goes_on_without_it() {
    let s = setup("alpn-off");
    let inetd = Inetd::start(&as_strs(&s.legacy_line(backend(echo), &[])), &s.syslog);
    assert_eq!(
        alpn_line(&s_client(inetd.port, Some("h2"))),
        "No ALPN negotiated"
    );
}

#[test]
fn the_exec_program_finds_the_agreed_protocol_in_ssl_alpn() {
    let s = setup("alpn-exec");
    let program = script(&s.dir, "alpn-env.sh", "echo \"SSL_ALPN=${SSL_ALPN-unset}\"");
    let cert = s.pki.server_pem.to_str().unwrap();
    let daemon = SslwrapDaemon::start(
        "127.0.0.1",
        &["-cert", cert, "-alpn", "imap,h2", "-exec", &program],
        &s.syslog,
    );
    let offering = |alpn: &'static [u8]| {
        let mut client = try_tls(daemon.port, |builder| {
            if !alpn.is_empty() {
                builder.set_alpn_protos(alpn).unwrap();
            }
        })
        .expect("handshake failed");
        String::from_utf8(read_to_close_notify(&mut client).unwrap()).unwrap()
    };
    assert_eq!(offering(b"\x02h2\x08http/1.1"), "SSL_ALPN=h2\n");
    assert_eq!(offering(b"\x02h2\x04imap"), "SSL_ALPN=imap\n");
    assert_eq!(offering(b""), "SSL_ALPN=unset\n");
}

#[test]
fn alpn_applies_to_the_handshake_after_starttls() {
    let mut s = setup("alpn-starttls");
    let dovecot = Dovecot::start(&s.dir, false);
    let line = s.legacy_line(
        dovecot.imap,
        &["-starttls", "imap", "-alpn", "imap", "-debug"],
    );
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let address = format!("127.0.0.1:{}", inetd.port);
    let ran = converse(
        "openssl",
        &[
            "s_client",
            "-starttls",
            "imap",
            "-alpn",
            "imap",
            "-connect",
            &address,
            "-crlf",
        ],
        // -crlf turns the line end into CRLF.
        b"a CAPABILITY\n",
        "a OK",
    );
    assert_eq!(alpn_line(&ran), "ALPN protocol: imap");
    assert!(
        ran.stdout.contains("a OK"),
        "dovecot did not answer inside TLS: {ran:#?}"
    );
    s.syslog.expect("STARTTLS done, TLSv1.3");
    let logged = s.syslog.expect("STARTTLS done");
    assert!(logged.ends_with("established, ALPN imap"), "{logged}");
}

#[test]
fn curl_speaks_http2_through_sslwrap_to_an_nginx_speaking_h2c() {
    let s = setup("alpn-h2");
    let root = s.dir.path("www");
    std::fs::create_dir_all(&root).unwrap();
    let body = hex(&pattern(96 * 1024, 15));
    std::fs::write(root.join("page.txt"), &body).unwrap();
    let nginx = Nginx::start_h2c(&s.dir, &root);
    // As the manual advises: nginx's cleartext http2 listener speaks HTTP/2 only.
    let line = s.legacy_line(nginx.port, &["-alpn", "h2"]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let saved = s.dir.path("fetched.txt");
    let url = format!("https://127.0.0.1:{}/page.txt", daemon.port);
    let ran = run(
        "curl",
        &[
            "-sS",
            "-k",
            "--http2",
            "--max-time",
            "30",
            "-o",
            saved.to_str().unwrap(),
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ],
    );
    assert!(ran.succeeded(), "curl failed: {ran:#?}");
    assert_eq!(ran.stdout, "2 200", "not HTTP/2: {ran:#?}");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        body,
        "the page did not arrive intact"
    );
    let logged = nginx.expect_log("status=200");
    assert!(logged.contains(" proto=HTTP/2.0 "), "{logged}");
}

/// Runs sslwrap with `-alpn LIST`: it must exit with status 1 before serving anyone; returns its line about -alpn.
fn refused_at_startup(name: &str, list: &str) -> String {
    let mut s = setup(name);
    let line = s.legacy_line(backend(echo), &["-alpn", list]);
    let (status, stderr) = run_to_end(&as_strs(&line), &s.syslog);
    assert_eq!(status.code(), Some(1), "-alpn {list:?}: {stderr}");
    assert!(stderr.starts_with("sslwrap: -alpn: "), "{stderr}");
    s.syslog.expect("-alpn: ")
}

#[test]
fn an_empty_name_in_the_list_is_a_startup_error() {
    for list in ["h2,,http/1.1", "", "h2,"] {
        let logged = refused_at_startup("alpn-empty", list);
        assert!(
            logged.ends_with(&format!(
                "-alpn: empty protocol name in '{list}' (names are separated by single commas)"
            )),
            "{logged}"
        );
    }
}

#[test]
fn a_name_over_255_bytes_is_a_startup_error() {
    let list = format!("h2,{}", "n".repeat(256));
    let logged = refused_at_startup("alpn-long", &list);
    assert!(
        logged.contains("is 256 bytes long; ALPN allows at most 255"),
        "{logged}"
    );
}

#[test]
fn a_list_longer_than_a_handshake_carries_is_a_startup_error() {
    let list = vec!["m".repeat(255); 256].join(",");
    let logged = refused_at_startup("alpn-list", &list);
    assert!(
        logged.contains("the list takes 65536 bytes in a TLS handshake; ALPN allows at most 65535"),
        "{logged}"
    );
}

#[test]
fn a_name_with_a_space_is_a_startup_error() {
    let logged = refused_at_startup("alpn-space", "http/1.1 h2");
    assert!(
        logged.contains("protocol name \"http/1.1 h2\" contains ' '"),
        "{logged}"
    );
}

#[test]
fn a_daemon_keeps_choosing_after_a_sighup_reload() {
    let mut s = setup("alpn-reload");
    let line = s.legacy_line(backend(echo), &["-alpn", "h2,http/1.1"]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    assert_eq!(
        alpn_line(&s_client(daemon.port, Some("http/1.1,h2"))),
        "ALPN protocol: h2"
    );
    send_signal(daemon.pid(), "HUP");
    s.syslog.expect("certificate, key and CA files reloaded");
    assert_eq!(
        alpn_line(&s_client(daemon.port, Some("http/1.1,h2"))),
        "ALPN protocol: h2"
    );
    assert!(
        s_client(daemon.port, Some("imap"))
            .stderr
            .contains("no application protocol"),
        "the reloaded context refuses as the first did"
    );
}
