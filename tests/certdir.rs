//! `-certdir DIR` end to end (issue 15, item 2): with two host-name files, a wildcard file and a default `-cert`,
//! `openssl s_client -servername NAME` gets each name's certificate, the wildcard one for a name one label below its
//! domain, and the default without SNI or for a name DIR has no file for, both from a daemon and from inetd-started
//! processes. An `-exec` program finds the name in SSL_TLS_SNI; a daemon serves a file added before SIGHUP; a broken
//! file or one whose certificate is made out for other names is skipped with a warning naming it; a DIR that cannot
//! be read is a start-up error.

mod common;
mod support;

use std::path::Path;

use common::*;
use support::*;

/// A self-signed certificate with `common_name` as its subject and `dns_names` in its subjectAltName.
fn named_identity(common_name: &str, dns_names: &[&str]) -> Identity {
    issue_for_dns_names(common_name, None, dns_names)
}

/// The -certdir of these tests: mail.example.org (certificate and key in one file), www.example.net (key beside it
/// in www.example.net.key, as a certbot link pair would be) and the wildcard *.example.org.
fn three_names(s: &Setup) -> String {
    let dir = s.dir.path("names");
    std::fs::create_dir(&dir).unwrap();
    write_identity(
        &dir.join("mail.example.org.pem"),
        &named_identity("mail certificate", &["mail.example.org"]),
    );
    let www = named_identity("www certificate", &["www.example.net", "example.net"]);
    std::fs::write(dir.join("www.example.net.pem"), www.cert.to_pem().unwrap()).unwrap();
    write_key(&dir.join("www.example.net.key"), &www);
    write_identity(
        &dir.join("_.example.org.pem"),
        &named_identity("wildcard certificate", &["*.example.org"]),
    );
    dir.to_str().unwrap().to_string()
}

fn write_key(path: &Path, identity: &Identity) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, identity.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The common name of the certificate `openssl s_client` gets from `port` asking for `server_name` (None: no SNI).
fn served_common_name(port: u16, server_name: Option<&str>) -> String {
    let address = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &address];
    match server_name {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    let ran = converse("openssl", &args, b"", "ALPN");
    let subject = ran
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("subject="))
        .unwrap_or_else(|| panic!("s_client printed no subject: {ran:#?}"));
    subject
        .split(", ")
        .find_map(|entry| entry.strip_prefix("CN = "))
        .unwrap_or_else(|| panic!("no CN in {subject:?}"))
        .to_string()
}

/// Every name of the three-name directory gets its own certificate; everything else gets the default (CN localhost).
fn each_name_gets_its_certificate(port: u16) {
    for (asked, served) in [
        (Some("mail.example.org"), "mail certificate"),
        (Some("MAIL.Example.ORG"), "mail certificate"),
        (Some("www.example.net"), "www certificate"),
        (Some("imap.example.org"), "wildcard certificate"),
        // A wildcard covers one label only.
        (Some("a.b.example.org"), "localhost"),
        (Some("unknown.example.com"), "localhost"),
        // The www file also holds example.net, but the naming rule goes by file name.
        (Some("example.net"), "localhost"),
        (None, "localhost"),
    ] {
        assert_eq!(
            served_common_name(port, asked),
            served,
            "asking for {asked:?}"
        );
    }
}

#[test]
fn a_daemon_serves_each_name_its_certificate_and_the_default_otherwise() {
    let s = setup("certdir-daemon");
    let dir = three_names(&s);
    let line = s.legacy_line(backend(echo), &["-certdir", &dir]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    each_name_gets_its_certificate(daemon.port);
}

#[test]
fn inetd_started_processes_serve_each_name_its_certificate_and_the_default_otherwise() {
    let s = setup("certdir-inetd");
    let dir = three_names(&s);
    let line = s.legacy_line(backend(echo), &["-certdir", &dir]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    each_name_gets_its_certificate(inetd.port);
}

/// An inetd-started process decodes the -cert files only for a client that gets them: a client DIR has a file for
/// is served even when the -cert file is broken, and a client without a name then gets an error naming that file.
#[test]
fn an_inetd_started_process_decodes_the_default_certificate_only_for_a_client_that_gets_it() {
    let mut s = setup("certdir-inetd-lazy-default");
    let dir = three_names(&s);
    let broken = s.dir.path("broken.pem");
    std::fs::write(&broken, "not a certificate\n").unwrap();
    let line = [
        "-cert",
        broken.to_str().unwrap(),
        "-port",
        &backend(echo).to_string(),
        "-certdir",
        &dir,
    ];
    let inetd = Inetd::start(&line, &s.syslog);
    assert_eq!(
        served_common_name(inetd.port, Some("mail.example.org")),
        "mail certificate"
    );
    let address = format!("127.0.0.1:{}", inetd.port);
    let ran = run(
        "openssl",
        &["s_client", "-connect", &address, "-noservername"],
    );
    assert!(
        !ran.stdout.contains("subject="),
        "a certificate was served: {ran:#?}"
    );
    let logged = s
        .syslog
        .expect(&format!("no certificate found in {}", broken.display()));
    assert!(logged.starts_with("<11>"), "not an error: {logged}");
}

#[test]
fn the_exec_program_finds_the_server_name_in_ssl_tls_sni() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup("certdir-exec");
    let dir = three_names(&s);
    let program = s.dir.path("sni-env.sh");
    std::fs::write(
        &program,
        "#!/bin/sh\necho \"SSL_TLS_SNI=${SSL_TLS_SNI-unset}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cert = s.pki.server_pem.to_str().unwrap();
    let line = [
        "-cert",
        cert,
        "-certdir",
        &dir,
        "-exec",
        program.to_str().unwrap(),
    ];
    let inetd = Inetd::start(&line, &s.syslog);
    let address = format!("127.0.0.1:{}", inetd.port);
    let sees = |server_name: &[&str]| {
        let mut args = vec!["s_client", "-connect", &address];
        args.extend(server_name);
        let ran = converse("openssl", &args, b"", "SSL_TLS_SNI=");
        ran.stdout
            .lines()
            .find(|line| line.starts_with("SSL_TLS_SNI="))
            .unwrap_or_else(|| panic!("the program's line did not arrive: {ran:#?}"))
            .to_string()
    };
    assert_eq!(
        sees(&["-servername", "imap.example.org"]),
        "SSL_TLS_SNI=imap.example.org"
    );
    assert_eq!(
        sees(&["-servername", "other.example.com"]),
        "SSL_TLS_SNI=other.example.com"
    );
    assert_eq!(sees(&["-noservername"]), "SSL_TLS_SNI=unset");
}

#[test]
fn a_daemon_serves_a_file_added_before_sighup() {
    let mut s = setup("certdir-sighup");
    let dir = three_names(&s);
    let line = s.legacy_line(backend(echo), &["-certdir", &dir]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    assert_eq!(
        served_common_name(daemon.port, Some("new.example.com")),
        "localhost"
    );
    write_identity(
        &Path::new(&dir).join("new.example.com.pem"),
        &named_identity("new certificate", &["new.example.com"]),
    );
    send_signal(daemon.pid(), "HUP");
    s.syslog.expect("certificate, key and CA files reloaded");
    assert_eq!(
        served_common_name(daemon.port, Some("new.example.com")),
        "new certificate"
    );
    assert_eq!(
        served_common_name(daemon.port, Some("mail.example.org")),
        "mail certificate"
    );
}

/// Adds to the three-name directory a file that is no certificate and one made out for another name than its
/// file's; returns their paths.
fn add_unusable_files(dir: &str) -> (String, String) {
    let broken = Path::new(dir).join("broken.example.org.pem");
    std::fs::write(&broken, b"not a certificate\n").unwrap();
    let mismatched = Path::new(dir).join("pop.example.org.pem");
    write_identity(
        &mismatched,
        &named_identity("misnamed certificate", &["smtp.example.org"]),
    );
    (
        broken.to_str().unwrap().to_string(),
        mismatched.to_str().unwrap().to_string(),
    )
}

#[test]
fn a_daemon_skips_unusable_files_with_a_warning_naming_each() {
    let mut s = setup("certdir-broken-daemon");
    let dir = three_names(&s);
    let (broken, mismatched) = add_unusable_files(&dir);
    let line = s.legacy_line(backend(echo), &["-certdir", &dir]);
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let warning = s.syslog.expect(&format!("-certdir: {broken} skipped"));
    assert!(warning.contains("no certificate found"), "{warning}");
    let warning = s.syslog.expect(&format!("-certdir: {mismatched} skipped"));
    assert!(warning.contains("smtp.example.org"), "{warning}");
    // The broken file's name falls back to the wildcard above it, the others are served as before.
    assert_eq!(
        served_common_name(daemon.port, Some("broken.example.org")),
        "wildcard certificate"
    );
    each_name_gets_its_certificate(daemon.port);
}

#[test]
fn an_inetd_started_process_warns_about_the_unusable_file_its_client_asks_for_and_falls_back() {
    let mut s = setup("certdir-broken-inetd");
    let dir = three_names(&s);
    let (broken, mismatched) = add_unusable_files(&dir);
    let line = s.legacy_line(backend(echo), &["-certdir", &dir]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    assert_eq!(
        served_common_name(inetd.port, Some("broken.example.org")),
        "wildcard certificate"
    );
    s.syslog.expect(&format!("-certdir: {broken} skipped"));
    assert_eq!(
        served_common_name(inetd.port, Some("pop.example.org")),
        "wildcard certificate"
    );
    s.syslog.expect(&format!("-certdir: {mismatched} skipped"));
}

#[test]
fn a_directory_that_cannot_be_read_is_a_start_up_error() {
    let mut s = setup("certdir-missing");
    let missing = s.dir.path("no-such-dir");
    let missing = missing.to_str().unwrap();
    let line = s.legacy_line(1, &["-certdir", missing]);
    let (status, _) = run_to_end(&as_strs(&line), &s.syslog);
    assert_eq!(status.code(), Some(1));
    s.syslog.expect(&format!(
        "-certdir: cannot read {missing}: No such file or directory"
    ));
}

/// One `openssl s_client -tls1_3` connection asking for `server_name`, saving its session in `session_out` and
/// offering `session_in`; returns what it printed once the backend has closed.
fn resuming_s_client(
    port: u16,
    server_name: &str,
    session_in: Option<&Path>,
    session_out: &Path,
) -> String {
    let address = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-tls1_3",
        "-ign_eof",
        "-connect",
        &address,
        "-servername",
        server_name,
        "-sess_out",
        session_out.to_str().unwrap(),
    ];
    if let Some(session) = session_in {
        args.extend(["-sess_in", session.to_str().unwrap()]);
    }
    let ran = run("openssl", &args);
    assert!(
        ran.stdout.contains("hello from the backend"),
        "no greeting came through: {ran:#?}"
    );
    ran.stdout
}

fn greet_and_close(mut stream: std::net::TcpStream) {
    use std::io::Write;
    let _ = stream.write_all(b"hello from the backend\n");
}

#[test]
fn a_session_under_a_certdir_name_resumes_with_the_ticketkey_keys_in_another_process() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup("certdir-tickets");
    let dir = three_names(&s);
    let key = s.dir.path("ticket.key");
    std::fs::write(&key, [7u8; 80]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let line = s.legacy_line(
        backend(greet_and_close),
        &["-certdir", &dir, "-ticketkey", key.to_str().unwrap()],
    );
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let session = s.dir.path("session");
    let first = resuming_s_client(inetd.port, "mail.example.org", None, &session);
    assert!(first.contains("CN = mail certificate"), "{first}");
    assert!(
        first.lines().any(|line| line.starts_with("New, ")),
        "{first}"
    );
    let second = resuming_s_client(
        inetd.port,
        "mail.example.org",
        Some(&session),
        &s.dir.path("unused"),
    );
    assert!(
        second.lines().any(|line| line.starts_with("Reused, ")),
        "{second}"
    );
}
