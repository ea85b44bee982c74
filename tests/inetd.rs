//! inetd mode end to end: each test starts the built binary the way inetd does (the accepted connection on fds
//! 0/1/2), with a real plaintext backend, and checks what a TLS client observes and what sslwrap logged.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslFiletype, SslVerifyMode, SslVersion};

impl Setup {
    fn inetd(&self, backend_port: u16, extra: &[&str]) -> Inetd {
        Inetd::start(
            &as_strs(&self.legacy_line(backend_port, extra)),
            &self.syslog,
        )
    }
}

const MIB: usize = 1024 * 1024;

#[test]
fn upload_64_mib_arrives_intact_and_half_close_reaches_the_backend() {
    let mut s = setup("upload");
    let inetd = s.inetd(backend(sink_then_digest), &[]);
    let data = pattern(64 * MIB, 1);
    let mut client = tls(inetd.port);
    write_and_close(&mut client, &data);
    let reply = read_to_close_notify(&mut client).expect("clean close after the digest");
    assert_eq!(String::from_utf8(reply).unwrap(), sha256_hex(&data));
    assert!(inetd.wait_children().iter().all(|status| status.success()));
    assert!(
        s.syslog.settle().iter().all(|line| !line.contains("error")),
        "{:?}",
        s.syslog.lines
    );
}

#[test]
fn download_64_mib_arrives_intact_and_ends_with_close_notify() {
    fn source(mut stream: std::net::TcpStream) {
        let _ = stream.write_all(&pattern(64 * MIB, 2));
    }
    let s = setup("download");
    let inetd = s.inetd(backend(source), &[]);
    let mut client = tls(inetd.port);
    let received = read_to_close_notify(&mut client).expect("close_notify after the data");
    assert_eq!(received.len(), 64 * MIB);
    assert_eq!(sha256_hex(&received), sha256_hex(&pattern(64 * MIB, 2)));
}

#[test]
fn backend_half_close_keeps_the_client_direction_flowing() {
    use std::sync::mpsc;
    static RESULT: std::sync::Mutex<Option<mpsc::Sender<String>>> = std::sync::Mutex::new(None);
    let (sender, receiver) = mpsc::channel();
    *RESULT.lock().unwrap() = Some(sender);
    fn greet_then_listen(mut stream: std::net::TcpStream) {
        stream.write_all(b"hello").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        let sender = RESULT.lock().unwrap().clone().unwrap();
        sender.send(sha256_hex(&received)).unwrap();
    }
    let s = setup("halfclose");
    let inetd = s.inetd(backend(greet_then_listen), &[]);
    let mut client = tls(inetd.port);
    assert_eq!(
        read_to_close_notify(&mut client).unwrap(),
        b"hello",
        "backend EOF must arrive as close_notify"
    );
    let data = pattern(MIB, 3);
    client
        .write_all(&data)
        .expect("the client direction is still open after close_notify from sslwrap");
    client.shutdown().unwrap();
    let digest = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("backend saw EOF");
    assert_eq!(digest, sha256_hex(&data));
}

#[test]
fn cipher_option_restricts_the_negotiated_cipher() {
    let s = setup("cipher");
    let inetd = s.inetd(
        backend(echo),
        &["-no_tls1_3", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    );
    let client = tls(inetd.port);
    assert_eq!(
        client.ssl().current_cipher().unwrap().name(),
        "ECDHE-ECDSA-CHACHA20-POLY1305"
    );
    assert_eq!(client.ssl().version_str(), "TLSv1.2");
}

#[test]
fn protocol_flags_change_the_negotiated_version() {
    let s = setup("versions");
    let no_tls13 = s.inetd(backend(echo), &["-no_tls1_3"]);
    assert_eq!(tls(no_tls13.port).ssl().version_str(), "TLSv1.2");
    let only13 = s.inetd(backend(echo), &["-tls1_3"]);
    assert_eq!(tls(only13.port).ssl().version_str(), "TLSv1.3");
    let refused = try_tls(only13.port, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap()
    });
    assert!(
        refused.is_err(),
        "a TLS 1.2-only client must be refused by -tls1_3"
    );
    let no_tls12 = s.inetd(backend(echo), &["-no_tls1_2"]);
    assert_eq!(tls(no_tls12.port).ssl().version_str(), "TLSv1.3");
}

fn tls10_client(builder: &mut openssl::ssl::SslConnectorBuilder) {
    builder
        .set_min_proto_version(Some(SslVersion::TLS1))
        .unwrap();
    builder
        .set_max_proto_version(Some(SslVersion::TLS1))
        .unwrap();
    builder.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
}

#[test]
fn tls1_flag_really_lets_a_tls10_client_in_and_warns() {
    let mut s = setup("tls1");
    let legacy = s.inetd(backend(echo), &["-tls1"]);
    let mut client =
        try_tls(legacy.port, tls10_client).expect("TLS 1.0 client accepted with -tls1");
    assert_eq!(client.ssl().version_str(), "TLSv1");
    client.write_all(b"old client\n").unwrap();
    let mut echoed = [0u8; 11];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"old client\n");
    s.syslog.expect("security level lowered to 0");
    let default = s.inetd(backend(echo), &[]);
    assert!(
        try_tls(default.port, tls10_client).is_err(),
        "default settings must refuse TLS 1.0"
    );
}

#[test]
fn required_client_certificate_refuses_a_client_without_one_and_accepts_a_good_one() {
    let mut s = setup("verify");
    let inetd = s.inetd(
        backend(echo),
        &["-Verify", "1", "-CAfile", s.pki.ca_pem.to_str().unwrap()],
    );
    let without = try_tls(inetd.port, |_| {}).and_then(|mut stream| {
        // TLS 1.3 reports the refusal on the first read.
        stream.write_all(b"x").map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map_err(|e| e.to_string())
    });
    assert!(
        without.is_err(),
        "a client without a certificate must be refused"
    );
    s.syslog.expect("peer did not return a certificate");

    let cert_path = s.dir.path("client.pem");
    write_identity(&cert_path, &s.pki.client);
    let mut with = try_tls(inetd.port, |b| {
        b.set_certificate_file(&cert_path, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&cert_path, SslFiletype::PEM)
            .unwrap();
    })
    .expect("a client with a certificate from the CA is accepted");
    with.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    with.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
}

#[test]
fn client_certificate_from_another_ca_is_refused_and_logged() {
    let mut s = setup("verify-rogue");
    let inetd = s.inetd(
        backend(echo),
        &["-verify", "1", "-CAfile", s.pki.ca_pem.to_str().unwrap()],
    );
    let rogue_ca = issue("rogue CA", None, true);
    let rogue = issue("rogue client", Some(&rogue_ca), false);
    let path = s.dir.path("rogue.pem");
    write_identity(&path, &rogue);
    let attempt = try_tls(inetd.port, |b| {
        b.set_certificate_file(&path, SslFiletype::PEM).unwrap();
        b.set_private_key_file(&path, SslFiletype::PEM).unwrap();
    })
    .and_then(|mut stream| {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map_err(|e| e.to_string())
    });
    assert!(attempt.is_err());
    s.syslog
        .expect("client certificate: unable to get local issuer certificate");
    // -verify (lower case) still lets a client without a certificate in.
    let mut anonymous = tls(inetd.port);
    anonymous.write_all(b"ok").unwrap();
    let mut echoed = [0u8; 2];
    anonymous.read_exact(&mut echoed).unwrap();
}

#[test]
fn nocert_serves_anonymous_suites_and_default_clients() {
    let s = setup("nocert");
    let inetd = Inetd::start(&["-nocert", "-port", &backend(echo).to_string()], &s.syslog);
    let mut anonymous = try_tls(inetd.port, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("aNULL:@SECLEVEL=0").unwrap();
    })
    .expect("anonymous client");
    let cipher = anonymous.ssl().current_cipher().unwrap().name();
    assert!(
        cipher.starts_with("ADH") || cipher.starts_with("AECDH"),
        "anonymous suite expected, got {cipher}"
    );
    assert!(anonymous.ssl().peer_certificate().is_none());
    anonymous.write_all(b"anon").unwrap();
    let mut echoed = [0u8; 4];
    anonymous.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"anon");

    let mut modern = tls(inetd.port);
    assert_eq!(modern.ssl().version_str(), "TLSv1.3");
    assert!(
        modern.ssl().peer_certificate().is_some(),
        "ephemeral certificate presented"
    );
    modern.write_all(b"new!").unwrap();
    modern.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"new!");
}

#[test]
fn a_garbage_client_is_dropped_logged_and_sees_no_log_text() {
    let mut s = setup("garbage");
    let inetd = s.inetd(backend(echo), &[]);
    let reply = raw_exchange(inetd.port, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&reply).contains("sslwrap"),
        "log text leaked to the client: {reply:?}"
    );
    let line = s.syslog.expect("TLS handshake with 127.0.0.1:");
    assert!(line.contains("failed: http request"), "{line}");
    assert!(inetd.wait_children().iter().all(|status| !status.success()));
}

#[test]
fn backend_refused_is_logged_and_the_client_gets_a_clean_close() {
    let mut s = setup("refused");
    let port = closed_port();
    let inetd = s.inetd(port, &[]);
    let mut client = tls(inetd.port);
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"");
    let line = s.syslog.expect("cannot connect to backend");
    assert!(
        line.contains(&format!("127.0.0.1 port {port}: Connection refused")),
        "{line}"
    );
    assert!(
        line.starts_with("<11>sslwrap["),
        "syslog priority user.err and ident sslwrap: {line}"
    );
}

#[test]
fn ipv6_backend_address_is_accepted() {
    let listener = match std::net::TcpListener::bind("[::1]:0") {
        Ok(listener) => listener,
        Err(_) => return, // no IPv6 loopback on this machine
    };
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo(stream));
        }
    });
    let s = setup("ipv6");
    let inetd = s.inetd(port, &["-addr", "::1"]);
    let mut client = tls(inetd.port);
    client.write_all(b"v6").unwrap();
    let mut echoed = [0u8; 2];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"v6");
}

#[test]
fn debug_logs_the_session_and_default_verbosity_does_not() {
    let mut s = setup("debuglog");
    // A complete chain (the test CA after the leaf): an incomplete one gets a warning at every start-up.
    let mut pem = s.pki.server.cert.to_pem().unwrap();
    pem.extend(s.pki.ca.cert.to_pem().unwrap());
    pem.extend(s.pki.server.key.private_key_to_pem_pkcs8().unwrap());
    std::fs::write(&s.pki.server_pem, pem).unwrap();
    let quiet = s.inetd(backend(echo), &[]);
    let mut client = tls(quiet.port);
    write_and_close(&mut client, b"abc");
    read_to_close_notify(&mut client).unwrap();
    quiet.wait_children();
    assert!(
        s.syslog.settle().is_empty(),
        "a normal session logs nothing by default: {:?}",
        s.syslog.lines
    );
    let verbose = s.inetd(backend(echo), &["-debug"]);
    let mut client = tls(verbose.port);
    write_and_close(&mut client, b"abc");
    read_to_close_notify(&mut client).unwrap();
    let line = s
        .syslog
        .expect("closed, 3 bytes from client, 3 bytes to client");
    assert!(line.starts_with("<15>sslwrap["), "debug priority: {line}");
}

#[test]
fn state_option_logs_handshake_progress() {
    let mut s = setup("state");
    let inetd = s.inetd(backend(echo), &["-state"]);
    let _client = tls(inetd.port);
    s.syslog.expect("TLS handshake done");
    s.syslog.expect("SSLv3/TLS write server hello");
}

#[test]
fn capath_directory_of_hashed_cas_verifies_clients() {
    let s = setup("capath");
    let ca_dir = s.dir.path("cas");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(&s.pki.ca_pem, ca_dir.join("ca.pem")).unwrap();
    let rehash = std::process::Command::new("openssl")
        .arg("rehash")
        .arg(&ca_dir)
        .status()
        .unwrap();
    assert!(rehash.success());
    let inetd = s.inetd(
        backend(echo),
        &["-Verify", "1", "-CApath", ca_dir.to_str().unwrap()],
    );
    let cert_path = s.dir.path("client.pem");
    write_identity(&cert_path, &s.pki.client);
    let mut client = try_tls(inetd.port, |b| {
        b.set_certificate_file(&cert_path, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&cert_path, SslFiletype::PEM)
            .unwrap();
    })
    .expect("a client certificate from a CA in -CApath is accepted");
    client.write_all(b"dir").unwrap();
    let mut echoed = [0u8; 3];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"dir");
    let rogue_ca = issue("rogue CA", None, true);
    let rogue_path = s.dir.path("rogue.pem");
    write_identity(&rogue_path, &issue("rogue", Some(&rogue_ca), false));
    let refused = try_tls(inetd.port, |b| {
        b.set_certificate_file(&rogue_path, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&rogue_path, SslFiletype::PEM)
            .unwrap();
    })
    .and_then(|mut stream| stream.read_exact(&mut echoed).map_err(|e| e.to_string()));
    assert!(
        refused.is_err(),
        "a certificate from a CA outside -CApath must be refused"
    );
}

/// Key files as the usual tools write them. sslwrap reads the RSA and EC ones itself (faster than OpenSSL's generic
/// decoder, and it says so at -debug) and leaves the rest to OpenSSL; either way a client that verifies the server's
/// signature against the CA must succeed, which proves the key in use is the one in the file.
#[test]
fn every_usual_key_file_format_signs_the_handshake() {
    let mut s = setup("key-formats");
    let ec = |curve| {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(curve).unwrap()).unwrap())
            .unwrap()
    };
    let rsa = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    type Format = fn(&PKey<Private>) -> Vec<u8>;
    let pkcs8: Format = |key| key.private_key_to_pem_pkcs8().unwrap();
    let traditional: Format = |key| match key.id() {
        Id::RSA => key.rsa().unwrap().private_key_to_pem().unwrap(),
        Id::EC => key.ec_key().unwrap().private_key_to_pem().unwrap(),
        _ => unreachable!("no traditional format"),
    };
    let cases: Vec<(&str, PKey<Private>, Format, bool)> = vec![
        ("EC P-256 PKCS#8", ec(Nid::X9_62_PRIME256V1), pkcs8, true),
        (
            "EC P-256 PKCS#8 without public point",
            ec(Nid::X9_62_PRIME256V1),
            p256_pkcs8_without_point,
            true,
        ),
        (
            "EC P-256 SEC1",
            ec(Nid::X9_62_PRIME256V1),
            traditional,
            true,
        ),
        ("EC P-384 PKCS#8", ec(Nid::SECP384R1), pkcs8, true),
        ("EC P-521 SEC1", ec(Nid::SECP521R1), traditional, true),
        ("RSA PKCS#8", rsa(), pkcs8, true),
        ("RSA PKCS#1", rsa(), traditional, true),
        (
            "Ed25519 PKCS#8",
            PKey::generate_ed25519().unwrap(),
            pkcs8,
            false,
        ),
    ];
    for (number, (name, key, format, read_directly)) in cases.into_iter().enumerate() {
        let identity = issue_with_key("localhost", Some(&s.pki.ca), false, key);
        let pem_path = s.dir.path(&format!("key-format-{number}.pem"));
        let mut pem = identity.cert.to_pem().unwrap();
        pem.extend(format(&identity.key));
        std::fs::write(&pem_path, pem).unwrap();
        let path = pem_path.to_str().unwrap();
        let inetd = Inetd::start(
            &["-cert", path, "-port", &backend(echo).to_string(), "-debug"],
            &s.syslog,
        );
        let mut client = try_tls(inetd.port, |builder| {
            builder.set_ca_file(&s.pki.ca_pem).unwrap();
            builder.set_verify(SslVerifyMode::PEER);
        })
        .unwrap_or_else(|error| panic!("{name}: {error}"));
        client.write_all(b"signed").unwrap();
        let mut reply = [0u8; 6];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"signed", "{name}");
        let direct_line = format!("key in {path} read directly");
        let logged = s
            .syslog
            .settle()
            .iter()
            .any(|line| line.contains(&direct_line));
        assert_eq!(logged, read_directly, "{name}");
    }
}

/// A P-256 PKCS#8 key whose SEC1 part carries only the scalar (RFC 5915 makes the public key optional).
fn p256_pkcs8_without_point(key: &PKey<Private>) -> Vec<u8> {
    let scalar = key
        .ec_key()
        .unwrap()
        .private_key()
        .to_vec_padded(32)
        .unwrap();
    let mut der = vec![
        0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
        0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x27, 0x30, 0x25,
        0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    der.extend(scalar);
    let body = openssl::base64::encode_block(&der);
    format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n").into_bytes()
}

#[test]
fn a_client_that_never_closes_is_let_go_after_the_close_limit() {
    fn say_goodbye(mut stream: std::net::TcpStream) {
        let _ = stream.write_all(b"goodbye\n");
    }
    let mut s = setup("close-limit");
    let inetd = s.inetd(backend(say_goodbye), &["-close_timeout", "2"]);
    let mut client = tls(inetd.port);
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"goodbye\n");
    // The client keeps its side open and says nothing: the session must still end, and with everything delivered
    // it ends as a success.
    let statuses = inetd.wait_children();
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    s.syslog
        .expect("all data delivered, but the client did not close within 2 s; closed");
    drop(client);
}
