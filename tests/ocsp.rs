//! `-ocsp FILE` end to end (issue 15, item 3): OCSP responses made here by `openssl ocsp` acting as its own responder
//! (an index.txt, the test CA as signer; no network) are stapled for `openssl s_client -status` in inetd and daemon
//! mode while they hold for the -cert certificate. An expired response, one for another certificate, one saying
//! "revoked" and one signed by a stranger are not stapled, with a warning naming the file; a SIGHUP reload reads the
//! file again; a daemon stops stapling once the response's nextUpdate passes, and says so once; a file that is no
//! OCSP response is a start-up error naming it. With `-certdir`, the response in `NAME.ocsp` beside `NAME.pem` is
//! stapled for NAME's certificate only, from a daemon (re-read on SIGHUP) and from processes tcpserver starts (which
//! read only the files of the name asked for); one that does not hold is not stapled, with a warning naming it.
//! Responses dated in the past are made under `faketime`. Every wait is bounded.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use openssl::x509::X509;
use support::*;

/// What `openssl s_client -status` prints when the server sent no response.
const NOT_STAPLED: &str = "OCSP response: no response sent";

fn path(file: &Path) -> &str {
    file.to_str().unwrap()
}

/// The index.txt line `openssl ocsp -index` looks the certificate up by (its serial): valid, or revoked a day ago.
fn index_line(certificate: &X509, revoked: bool) -> String {
    let serial = certificate
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string();
    let (status, revoked_at) = if revoked {
        ("R", "200101000000Z")
    } else {
        ("V", "")
    };
    format!("{status}\t301231000000Z\t{revoked_at}\t{serial}\tunknown\t/CN=test\n")
}

/// Makes `out`, an OCSP response of the test CA for `certificate` (valid, or revoked), valid for `validity` (openssl
/// ocsp's -ndays/-nmin) from the time `clock` (a faketime offset such as "-3d"; None: now).
fn make_response(
    s: &Setup,
    certificate: &X509,
    revoked: bool,
    clock: Option<&str>,
    validity: &[&str],
    out: &Path,
) {
    make_signed_response(s, &s.pki.ca, certificate, revoked, clock, validity, out);
}

/// As make_response, but signed by `signer`.
fn make_signed_response(
    s: &Setup,
    signer: &Identity,
    certificate: &X509,
    revoked: bool,
    clock: Option<&str>,
    validity: &[&str],
    out: &Path,
) {
    let signer_key = s.dir.path("signer.key");
    std::fs::write(&signer_key, signer.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let signer_cert = s.dir.path("signer.pem");
    std::fs::write(&signer_cert, signer.cert.to_pem().unwrap()).unwrap();
    let subject = s.dir.path("subject.pem");
    std::fs::write(&subject, certificate.to_pem().unwrap()).unwrap();
    let index = s.dir.path("index.txt");
    std::fs::write(&index, index_line(certificate, revoked)).unwrap();
    let ca = path(&s.pki.ca_pem);
    let mut args: Vec<&str> = Vec::new();
    if let Some(offset) = clock {
        args.extend(["-f", offset, "openssl"]);
    }
    args.extend([
        "ocsp",
        "-index",
        path(&index),
        "-rsigner",
        path(&signer_cert),
        "-rkey",
        path(&signer_key),
        "-CA",
        ca,
    ]);
    args.extend([
        "-issuer",
        ca,
        "-cert",
        path(&subject),
        "-respout",
        path(out),
    ]);
    args.extend(validity);
    let program = if clock.is_some() {
        "faketime"
    } else {
        "openssl"
    };
    let ran = run(program, &args);
    assert!(
        ran.succeeded() && out.exists(),
        "{program} {args:?}: {ran:#?}"
    );
}

/// A response for the server certificate, good now and for a day.
fn good_response(s: &Setup, name: &str) -> PathBuf {
    let out = s.dir.path(name);
    make_response(s, &s.pki.server.cert, false, None, &["-ndays", "1"], &out);
    out
}

/// A response for the server certificate made three days ago, valid for one day: expired two days ago.
fn expired_response(s: &Setup, name: &str) -> PathBuf {
    let out = s.dir.path(name);
    make_response(
        s,
        &s.pki.server.cert,
        false,
        Some("-3d"),
        &["-ndays", "1"],
        &out,
    );
    out
}

/// `openssl s_client -status` to `port`, until its handshake summary shows; returns what it printed.
fn s_client_status(port: u16) -> Ran {
    let address = format!("127.0.0.1:{port}");
    converse(
        "openssl",
        &["s_client", "-connect", &address, "-status"],
        b"",
        "Verify return code",
    )
}

/// As s_client_status, asking for `server_name` (SNI); also checks that the certificate of that name came back.
fn s_client_status_for(port: u16, server_name: &str) -> Ran {
    let address = format!("127.0.0.1:{port}");
    let ran = converse(
        "openssl",
        &[
            "s_client",
            "-connect",
            &address,
            "-servername",
            server_name,
            "-status",
        ],
        b"",
        "Verify return code",
    );
    assert!(
        ran.stdout.contains(&format!("CN = {server_name}")),
        "not the certificate of {server_name}: {ran:#?}"
    );
    ran
}

fn assert_stapled_good(ran: &Ran) {
    assert!(
        ran.stdout.contains("OCSP Response Status: successful")
            && ran.stdout.contains("Cert Status: good"),
        "no good OCSP response stapled: {ran:#?}"
    );
}

fn assert_not_stapled(ran: &Ran) {
    assert!(
        ran.stdout.contains(NOT_STAPLED),
        "a response was stapled: {ran:#?}"
    );
}

/// The server certificate followed by the CA that issued it, and its key: the issuer comes from the -cert file.
fn write_server_with_chain(s: &Setup) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = s.dir.path("fullchain.pem");
    let mut pem = s.pki.server.cert.to_pem().unwrap();
    pem.extend(s.pki.ca.cert.to_pem().unwrap());
    pem.extend(s.pki.server.key.private_key_to_pem_pkcs8().unwrap());
    std::fs::write(&file, pem).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// Serves `response` in inetd mode: it must not be stapled, and the warning must name the file and `reason`.
fn assert_not_stapled_in_inetd_mode(s: &mut Setup, response: &Path, reason: &str) {
    let line = s.legacy_line(
        backend(echo),
        &["-CAfile", path(&s.pki.ca_pem), "-ocsp", path(response)],
    );
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    assert_not_stapled(&s_client_status(inetd.port));
    let warning = s.syslog.expect("-ocsp: the response in");
    assert!(
        warning.contains(path(response)) && warning.contains(reason),
        "{warning}"
    );
}

#[test]
fn inetd_mode_staples_a_good_response_for_a_client_that_asks() {
    let s = setup("ocsp-inetd");
    let response = good_response(&s, "ocsp.der");
    let line = s.legacy_line(
        backend(echo),
        &["-CAfile", path(&s.pki.ca_pem), "-ocsp", path(&response)],
    );
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    assert_stapled_good(&s_client_status(inetd.port));
}

#[test]
fn a_daemon_staples_the_response_and_rereads_the_file_on_sighup() {
    let mut s = setup("ocsp-daemon");
    let cert = write_server_with_chain(&s);
    let response = s.dir.path("ocsp.der");
    std::fs::copy(good_response(&s, "fresh.der"), &response).unwrap();
    let port = backend(echo).to_string();
    let daemon = SslwrapDaemon::start(
        "127.0.0.1",
        &[
            "-cert",
            path(&cert),
            "-port",
            &port,
            "-ocsp",
            path(&response),
        ],
        &s.syslog,
    );
    assert_stapled_good(&s_client_status(daemon.port));
    assert_stapled_good(&s_client_status(daemon.port));
    std::fs::copy(expired_response(&s, "stale.der"), &response).unwrap();
    send_signal(daemon.pid(), "HUP");
    s.syslog
        .expect("SIGHUP: certificate, key and CA files reloaded");
    let warning = s.syslog.expect("is not stapled");
    assert!(
        warning.contains(path(&response)) && warning.contains("expired"),
        "{warning}"
    );
    assert_not_stapled(&s_client_status(daemon.port));
}

#[test]
fn an_expired_response_is_not_stapled_and_the_warning_names_the_file() {
    let mut s = setup("ocsp-expired");
    let response = expired_response(&s, "old.der");
    assert_not_stapled_in_inetd_mode(&mut s, &response, "is not stapled: it expired on");
}

#[test]
fn a_response_for_another_certificate_is_not_stapled() {
    let mut s = setup("ocsp-other");
    let response = s.dir.path("client.der");
    make_response(
        &s,
        &s.pki.client.cert,
        false,
        None,
        &["-ndays", "1"],
        &response,
    );
    assert_not_stapled_in_inetd_mode(&mut s, &response, "it is for another certificate");
}

#[test]
fn a_response_saying_revoked_is_not_stapled() {
    let mut s = setup("ocsp-revoked");
    let response = s.dir.path("revoked.der");
    make_response(
        &s,
        &s.pki.server.cert,
        true,
        None,
        &["-ndays", "1"],
        &response,
    );
    assert_not_stapled_in_inetd_mode(&mut s, &response, "it says the certificate is revoked");
}

#[test]
fn a_response_not_signed_by_the_issuer_is_not_stapled() {
    let mut s = setup("ocsp-forged");
    let stranger = issue("another CA", None, true);
    let response = s.dir.path("forged.der");
    make_signed_response(
        &s,
        &stranger,
        &s.pki.server.cert,
        false,
        None,
        &["-ndays", "1"],
        &response,
    );
    assert_not_stapled_in_inetd_mode(&mut s, &response, "its signature does not verify");
}

#[test]
fn a_file_that_is_no_ocsp_response_is_a_start_up_error_naming_it() {
    let s = setup("ocsp-garbage");
    let garbage = s.dir.path("garbage.der");
    std::fs::write(&garbage, b"this is not an OCSP response\n").unwrap();
    let line = s.legacy_line(backend(echo), &["-ocsp", path(&garbage)]);
    let (status, stderr) = run_to_end(&as_strs(&line), &s.syslog);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "-ocsp: {} is not a DER OCSP response",
            path(&garbage)
        )),
        "{stderr}"
    );
}

#[test]
fn a_daemon_stops_stapling_once_the_next_update_passes() {
    let mut s = setup("ocsp-passing");
    // Made 40 seconds ago with one minute of validity: the nextUpdate comes some 20 seconds after start.
    let response = s.dir.path("short.der");
    make_response(
        &s,
        &s.pki.server.cert,
        false,
        Some("-40s"),
        &["-nmin", "1"],
        &response,
    );
    let port = backend(echo).to_string();
    let daemon = SslwrapDaemon::start(
        "127.0.0.1",
        &[
            "-cert",
            path(&s.pki.server_pem),
            "-CAfile",
            path(&s.pki.ca_pem),
            "-port",
            &port,
            "-ocsp",
            path(&response),
        ],
        &s.syslog,
    );
    assert_stapled_good(&s_client_status(daemon.port));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ran = s_client_status(daemon.port);
        if ran.stdout.contains(NOT_STAPLED) {
            break;
        }
        assert_stapled_good(&ran);
        assert!(
            Instant::now() < deadline,
            "still stapled a minute after its nextUpdate"
        );
    }
    let warning = s.syslog.expect("is not stapled: it expired");
    assert!(warning.contains(path(&response)), "{warning}");
    // Each of these clients is served by a session process of its own; the warning was told once for all of them.
    assert_not_stapled(&s_client_status(daemon.port));
    assert_not_stapled(&s_client_status(daemon.port));
    let warnings = s
        .syslog
        .settle()
        .iter()
        .filter(|line| line.contains("is not stapled"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", s.syslog.lines);
}

/// A -certdir whose certificates the test CA issued: `stapled.example.org` with a good response beside it,
/// `bare.example.org` with none, `expired.example.org` with an expired one and `mixed.example.org` with the stapled
/// one's response. Returns the directory and the certificates, in that order.
fn certdir_with_responses(s: &Setup) -> (PathBuf, Vec<X509>) {
    let dir = s.dir.path("names");
    std::fs::create_dir(&dir).unwrap();
    let mut certificates = Vec::new();
    for name in ["stapled", "bare", "expired", "mixed"] {
        let host = format!("{name}.example.org");
        let identity = issue_for_dns_names(&host, Some(&s.pki.ca), &[&host]);
        write_identity(&dir.join(format!("{host}.pem")), &identity);
        certificates.push(identity.cert);
    }
    let one_day = ["-ndays", "1"];
    let stapled = &certificates[0];
    make_response(
        s,
        stapled,
        false,
        None,
        &one_day,
        &dir.join("stapled.example.org.ocsp"),
    );
    make_response(
        s,
        stapled,
        false,
        None,
        &one_day,
        &dir.join("mixed.example.org.ocsp"),
    );
    let expired = dir.join("expired.example.org.ocsp");
    make_response(s, &certificates[2], false, Some("-3d"), &one_day, &expired);
    (dir, certificates)
}

/// The lines logged so far that say the response in `file` is not stapled.
fn not_stapled_warnings(syslog: &mut Syslog, file: &Path) -> Vec<String> {
    syslog
        .settle()
        .iter()
        .filter(|line| line.contains(path(file)) && line.contains("is not stapled"))
        .cloned()
        .collect()
}

/// One warning, and only one, says the response in `file` is not stapled, and why.
fn assert_warned_once(syslog: &mut Syslog, file: &Path, reason: &str) {
    let warnings = not_stapled_warnings(syslog, file);
    assert!(
        warnings.len() == 1
            && warnings[0].contains("-certdir: the response in")
            && warnings[0].contains(reason),
        "expected one warning about {} saying {reason:?}: {:#?}",
        file.display(),
        syslog.lines
    );
}

#[test]
fn a_daemon_staples_each_certdir_name_the_response_beside_its_certificate_and_rereads_it_on_sighup()
{
    let mut s = setup("ocsp-certdir-daemon");
    let (dir, certificates) = certdir_with_responses(&s);
    let line = s.legacy_line(
        backend(echo),
        &["-CAfile", path(&s.pki.ca_pem), "-certdir", path(&dir)],
    );
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    assert_stapled_good(&s_client_status_for(daemon.port, "stapled.example.org"));
    assert_not_stapled(&s_client_status_for(daemon.port, "bare.example.org"));
    assert_not_stapled(&s_client_status(daemon.port));
    let expired = dir.join("expired.example.org.ocsp");
    assert_not_stapled(&s_client_status_for(daemon.port, "expired.example.org"));
    assert_not_stapled(&s_client_status_for(daemon.port, "expired.example.org"));
    assert_warned_once(&mut s.syslog, &expired, "it expired on");
    let mixed = dir.join("mixed.example.org.ocsp");
    assert_not_stapled(&s_client_status_for(daemon.port, "mixed.example.org"));
    assert_warned_once(&mut s.syslog, &mixed, "it is for another certificate");

    // What a refresh hook does: write the new response beside the old one, rename it over, signal the daemon.
    let fresh = dir.join("expired.example.org.ocsp.new");
    make_response(&s, &certificates[2], false, None, &["-ndays", "1"], &fresh);
    std::fs::rename(&fresh, &expired).unwrap();
    send_signal(daemon.pid(), "HUP");
    s.syslog
        .expect("SIGHUP: certificate, key and CA files reloaded");
    assert_stapled_good(&s_client_status_for(daemon.port, "expired.example.org"));
    assert_stapled_good(&s_client_status_for(daemon.port, "stapled.example.org"));
}

#[test]
fn processes_tcpserver_starts_staple_the_response_of_the_certdir_name_asked_for_and_read_no_other()
{
    let mut s = setup("ocsp-certdir-tcpserver");
    let (dir, _) = certdir_with_responses(&s);
    // The -cert certificate's own response goes with it, to clients DIR has no file for.
    let default_response = good_response(&s, "default.der");
    let port = free_port("127.0.0.1");
    let line = s.legacy_line(
        backend(echo),
        &[
            "-CAfile",
            path(&s.pki.ca_pem),
            "-certdir",
            path(&dir),
            "-ocsp",
            path(&default_response),
        ],
    );
    let mut command = std::process::Command::new("tcpserver");
    command
        .args([
            "-q",
            "-R",
            "-H",
            "-l",
            "localhost",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_sslwrap"))
        .args(&line)
        .env("SSLWRAP_SYSLOG_SOCKET", &s.syslog.path);
    let mut tcpserver = Service::spawn("tcpserver", &mut command, &s.dir);
    tcpserver.wait_listening(port);
    assert_stapled_good(&s_client_status_for(port, "stapled.example.org"));
    assert_not_stapled(&s_client_status_for(port, "bare.example.org"));
    assert_stapled_good(&s_client_status(port));
    let expired = dir.join("expired.example.org.ocsp");
    let mixed = dir.join("mixed.example.org.ocsp");
    // Each process opened only the files of the name its client asked for.
    assert!(
        not_stapled_warnings(&mut s.syslog, &expired).is_empty()
            && not_stapled_warnings(&mut s.syslog, &mixed).is_empty(),
        "{:#?}",
        s.syslog.lines
    );
    assert_not_stapled(&s_client_status_for(port, "expired.example.org"));
    s.syslog.expect("expired.example.org.ocsp is not stapled");
    assert_warned_once(&mut s.syslog, &expired, "it expired on");
}
