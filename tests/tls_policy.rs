//! The default TLS policy (issue 16, item 4) as clients meet it: on the documentation's line a TLS 1.2 client gets
//! only forward-secret AEAD suites, chosen by the server's order, and its renegotiation request is refused; the
//! options that ask for something older (`-cipher`, `-tls1`, `-tls1_1`, `-no_tls1_2 -no_tls1_3`, `-nocert`) still get
//! exactly what they got before, with their warnings. Every server is the built binary started as inetd starts it.
//! These tests must never accept a handshake failure without checking that it is the refusal the policy makes.

mod common;
mod support;

use std::io::{Read, Write};

use common::*;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnectorBuilder, SslVersion};
use support::*;

/// The policy's TLS 1.2 list (src/tls.rs), in the server's order.
const POLICY_ORDER: [&str; 9] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
];

fn inetd(s: &Setup, extra: &[&str]) -> Inetd {
    Inetd::start(&as_strs(&s.legacy_line(backend(echo), extra)), &s.syslog)
}

/// A TLS 1.2 client offering exactly `ciphers` (an OpenSSL cipher list, in the client's order).
fn tls12_offering(ciphers: &str) -> impl FnOnce(&mut SslConnectorBuilder) + '_ {
    move |builder| {
        builder
            .set_max_proto_version(Some(SslVersion::TLS1_2))
            .unwrap();
        builder.set_cipher_list(ciphers).unwrap();
    }
}

/// A client speaking only `version`, offering OpenSSL's whole default list at security level 0, as an old client
/// would offer its CBC suites.
fn legacy_client(version: SslVersion) -> impl FnOnce(&mut SslConnectorBuilder) {
    move |builder| {
        builder.set_min_proto_version(Some(version)).unwrap();
        builder.set_max_proto_version(Some(version)).unwrap();
        builder.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    }
}

/// Sends a line through the session and expects it back from the echo backend.
fn assert_echoes(stream: &mut openssl::ssl::SslStream<std::net::TcpStream>, line: &[u8]) {
    stream.write_all(line).unwrap();
    let mut echoed = vec![0u8; line.len()];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, line);
}

/// The client's failure must be the handshake_failure alert the server sends when it shares no suite, and the
/// server's log must say so.
fn assert_refused_for_no_shared_cipher(s: &mut Setup, port: u16, ciphers: &str) {
    let failure = match try_tls(port, tls12_offering(ciphers)) {
        Ok(stream) => panic!(
            "a client offering only {ciphers} got {}",
            stream.ssl().current_cipher().unwrap().name()
        ),
        Err(failure) => failure,
    };
    assert!(
        failure.contains("alert handshake failure"),
        "a client offering only {ciphers} must get the handshake_failure alert, got: {failure}"
    );
    s.syslog.expect("no shared cipher");
    s.syslog.lines.clear();
}

#[test]
fn a_cbc_suite_offered_alone_is_refused_with_a_handshake_failure_alert() {
    let mut s = setup("policy-cbc");
    let server = inetd(&s, &[]);
    for cbc in [
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
    ] {
        assert_refused_for_no_shared_cipher(&mut s, server.port, cbc);
    }
    // The same line serves a client that offers an AEAD suite as well.
    let mut client = try_tls(
        server.port,
        tls12_offering("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"),
    )
    .expect("a client offering an AEAD suite too");
    assert_eq!(
        client.ssl().current_cipher().unwrap().name(),
        "ECDHE-ECDSA-AES256-GCM-SHA384"
    );
    assert_echoes(&mut client, b"aead\n");
}

#[test]
fn a_suite_without_forward_secrecy_is_refused_even_with_an_aead_cipher() {
    let mut s = setup("policy-static-rsa");
    // Static RSA key exchange needs an RSA certificate; the fixtures make ECDSA ones.
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let identity = issue_with_key("localhost", Some(&s.pki.ca), false, rsa);
    write_identity(&s.pki.server_pem, &identity);
    let server = inetd(&s, &[]);
    for static_rsa in ["AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA"] {
        assert_refused_for_no_shared_cipher(&mut s, server.port, static_rsa);
    }
    let mut client = try_tls(server.port, tls12_offering("DEFAULT"))
        .expect("a TLS 1.2 client with OpenSSL's default list");
    assert_eq!(
        client.ssl().current_cipher().unwrap().name(),
        "ECDHE-RSA-AES128-GCM-SHA256",
        "the server's first choice for an RSA certificate"
    );
    assert_echoes(&mut client, b"forward secret\n");
}

#[test]
fn the_servers_cipher_order_wins_over_the_clients() {
    let s = setup("policy-order");
    let server = inetd(&s, &[]);
    let reversed: Vec<&str> = POLICY_ORDER.iter().rev().copied().collect();
    let mut client = try_tls(server.port, tls12_offering(&reversed.join(":")))
        .expect("a client offering the policy list backwards");
    assert_eq!(
        client.ssl().current_cipher().unwrap().name(),
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "the server's first suite for its ECDSA certificate, not the client's first"
    );
    assert_echoes(&mut client, b"server order\n");
    // TLS 1.3 keeps OpenSSL's own suite order (TLS_AES_256_GCM_SHA384 first), and the server's order decides there
    // too.
    let tls13 = try_tls(server.port, |builder| {
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_3))
            .unwrap();
        builder
            .set_ciphersuites(
                "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
            )
            .unwrap();
    })
    .expect("a TLS 1.3 client");
    assert_eq!(
        tls13.ssl().current_cipher().unwrap().name(),
        "TLS_AES_256_GCM_SHA384"
    );
}

#[test]
fn a_clients_renegotiation_is_refused_and_ends_the_session() {
    let mut s = setup("policy-renegotiation");
    let server = inetd(&s, &[]);
    let address = format!("127.0.0.1:{}", server.port);
    // Without -quiet s_client reads its commands: a line "R" asks for a renegotiation (TLS 1.2 and older).
    let ran = converse_in_steps(
        "openssl",
        &["s_client", "-connect", &address, "-tls1_2"],
        &[
            (b"before renegotiation\n", "before renegotiation"),
            (b"R\n", "RENEGOTIATING"),
            (b"after renegotiation\n", "after renegotiation"),
        ],
    );
    assert!(
        ran.stdout.contains("before renegotiation") && ran.stderr.contains("RENEGOTIATING"),
        "the session must work until s_client asks to renegotiate: {ran:#?}"
    );
    assert!(
        ran.stderr.contains("no renegotiation"),
        "the server must answer the request with the no_renegotiation alert: {ran:#?}"
    );
    assert!(
        !ran.stdout.contains("after renegotiation"),
        "nothing may pass after a refused renegotiation: {ran:#?}"
    );
    // s_client answers the refusal with a fatal alert of its own, which ends the session.
    let ended = s.syslog.expect("session ended");
    assert!(ended.contains("alert handshake failure"), "{ended}");
}

#[test]
fn an_explicit_cipher_list_is_served_exactly_as_given() {
    let s = setup("policy-cipher");
    let server = inetd(&s, &["-cipher", "ECDHE-ECDSA-AES128-SHA"]);
    let mut client = try_tls(server.port, tls12_offering("ECDHE-ECDSA-AES128-SHA"))
        .expect("the CBC suite -cipher names");
    assert_eq!(
        client.ssl().current_cipher().unwrap().name(),
        "ECDHE-ECDSA-AES128-SHA"
    );
    assert_echoes(&mut client, b"as asked\n");
    assert!(
        try_tls(server.port, tls12_offering("ECDHE-ECDSA-AES128-GCM-SHA256")).is_err(),
        "a policy suite that -cipher does not name must not be offered"
    );
}

#[test]
fn legacy_protocol_options_keep_the_old_cipher_list_and_warn() {
    let cases: [(&[&str], SslVersion, &str); 3] = [
        (&["-tls1"], SslVersion::TLS1, "TLSv1"),
        (&["-tls1_1"], SslVersion::TLS1_1, "TLSv1.1"),
        (&["-no_tls1_2", "-no_tls1_3"], SslVersion::TLS1_1, "TLSv1.1"),
    ];
    for (flags, version, version_name) in cases {
        let mut s = setup("policy-legacy");
        let server = inetd(&s, flags);
        let mut client = try_tls(server.port, legacy_client(version))
            .unwrap_or_else(|failure| panic!("{flags:?}: a {version_name} client: {failure}"));
        assert_eq!(client.ssl().version_str(), version_name, "{flags:?}");
        // These versions have no AEAD suite: what they get is one of the CBC suites of OpenSSL's default list.
        let cipher = client.ssl().current_cipher().unwrap().name();
        assert!(
            cipher.contains("-SHA") && !cipher.contains("GCM"),
            "{flags:?}: {cipher}"
        );
        assert_echoes(&mut client, b"old client\n");
        s.syslog.expect("security level lowered to 0");
    }
}

#[test]
fn nocert_keeps_its_anonymous_suites_and_its_whole_list() {
    let s = setup("policy-nocert");
    let server = Inetd::start(&["-nocert", "-port", &backend(echo).to_string()], &s.syslog);
    let mut anonymous = try_tls(server.port, tls12_offering("aNULL:@SECLEVEL=0"))
        .expect("a client offering only anonymous suites");
    let cipher = anonymous.ssl().current_cipher().unwrap().name();
    assert!(
        cipher.starts_with("ADH") || cipher.starts_with("AECDH"),
        "anonymous suite expected, got {cipher}"
    );
    assert!(anonymous.ssl().peer_certificate().is_none());
    assert_echoes(&mut anonymous, b"anonymous\n");
    // The ephemeral certificate is ECDSA; a CBC suite outside the policy list is still served with -nocert.
    let mut cbc = try_tls(server.port, tls12_offering("ECDHE-ECDSA-AES128-SHA"))
        .expect("a client offering only a CBC suite");
    assert_eq!(
        cbc.ssl().current_cipher().unwrap().name(),
        "ECDHE-ECDSA-AES128-SHA"
    );
    assert_echoes(&mut cbc, b"cbc\n");
}
