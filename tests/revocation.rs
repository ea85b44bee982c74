//! Client certificates checked against CRLs (-CRLfile, -crl_check, -crl_check_all, hashed CRLs in -CApath): a revoked
//! certificate is refused with the alert OpenSSL sends and a log line naming its subject, a good one passes, and a
//! SIGHUP reload reads the CRL file again. Also the start-up checks: a file without a CRL and checking without any CRL
//! are errors naming the cause, an expired CRL is a warning naming the file. CRLs are made here with the `openssl`
//! crate; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
use openssl::hash::MessageDigest;
use openssl::ssl::SslFiletype;
use openssl::x509::extension::AuthorityKeyIdentifier;
use openssl::x509::{X509, X509Crl, X509CrlBuilder, X509Extension, X509RevokedBuilder};

const DAY: i64 = 24 * 60 * 60;

/// Seconds since the epoch, for CRL dates relative to now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A CRL signed by `ca` that revokes `revoked`, valid from a day ago until `next_update` seconds from now.
fn crl(ca: &Identity, revoked: &[&X509], next_update: i64) -> X509Crl {
    let mut builder = X509CrlBuilder::new().unwrap();
    builder.set_issuer_name(ca.cert.subject_name()).unwrap();
    builder
        .set_last_update(&Asn1Time::from_unix(now() - DAY).unwrap())
        .unwrap();
    builder
        .set_next_update(&Asn1Time::from_unix(now() + next_update).unwrap())
        .unwrap();
    for certificate in revoked {
        let mut entry = X509RevokedBuilder::new().unwrap();
        entry
            .set_serial_number(certificate.serial_number())
            .unwrap();
        entry
            .set_revocation_date(&Asn1Time::from_unix(now() - DAY).unwrap())
            .unwrap();
        builder.add_revoked(entry.build()).unwrap();
    }
    // The crate's builder insists on the two extensions RFC 5280 requires of a CRL.
    let context_holder = X509::builder().unwrap();
    let context = context_holder.x509v3_context(Some(&ca.cert), None);
    let authority = AuthorityKeyIdentifier::new()
        .keyid(false)
        .issuer(false)
        .build(&context)
        .unwrap();
    builder.append_extension(authority).unwrap();
    // OpenSSL's configuration syntax cannot set a CRL number, so its value goes in as the DER of INTEGER 1.
    let number = X509Extension::new_from_der(
        &Asn1Object::from_str("2.5.29.20").unwrap(),
        false,
        &Asn1OctetString::new_from_bytes(&[0x02, 0x01, 0x01]).unwrap(),
    )
    .unwrap();
    builder.append_extension(number).unwrap();
    builder.sign(&ca.key, MessageDigest::sha256()).unwrap();
    builder.build().unwrap()
}

fn write_crls(path: &Path, crls: &[X509Crl]) {
    let pem: Vec<u8> = crls.iter().flat_map(|crl| crl.to_pem().unwrap()).collect();
    std::fs::write(path, pem).unwrap();
}

/// A certificate, the certificates after it (its chain) and its key, in one PEM file for a client.
fn write_client(path: &Path, identity: &Identity, chain: &[&X509]) {
    let mut pem = identity.cert.to_pem().unwrap();
    for certificate in chain {
        pem.extend(certificate.to_pem().unwrap());
    }
    pem.extend(identity.key.private_key_to_pem_pkcs8().unwrap());
    std::fs::write(path, pem).unwrap();
}

/// Connects with the client certificate (and chain) in `pem`, sends a line and reads its echo: Ok with the echo,
/// or the failure the client saw. With TLS 1.3 a refused certificate shows on the first read, as the server's alert.
fn exchange_with_certificate(port: u16, pem: &Path) -> Result<Vec<u8>, String> {
    let mut stream = try_tls(port, |builder| {
        builder.set_certificate_chain_file(pem).unwrap();
        builder.set_private_key_file(pem, SslFiletype::PEM).unwrap();
    })?;
    stream.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).map_err(|e| e.to_string())?;
    Ok(echoed.to_vec())
}

/// A CA with a good and a revoked client, their PEM files, and the CA's CRL revoking the one.
struct Clients {
    good: PathBuf,
    revoked: PathBuf,
    revoked_identity: Identity,
    crl_file: PathBuf,
}

fn clients(s: &Setup) -> Clients {
    let revoked_identity = issue("revoked client", Some(&s.pki.ca), false);
    let good = s.dir.path("good.pem");
    write_client(&good, &s.pki.client, &[]);
    let revoked = s.dir.path("revoked.pem");
    write_client(&revoked, &revoked_identity, &[]);
    let crl_file = s.dir.path("crl.pem");
    write_crls(
        &crl_file,
        &[crl(&s.pki.ca, &[&revoked_identity.cert], 30 * DAY)],
    );
    Clients {
        good,
        revoked,
        revoked_identity,
        crl_file,
    }
}

/// An inetd-mode sslwrap in front of an echo backend with the documentation's line and `extra`.
fn inetd_with(s: &Setup, extra: &[&str]) -> Inetd {
    Inetd::start(&as_strs(&s.legacy_line(backend(echo), extra)), &s.syslog)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What the client and the log show for the revoked certificate, and the good one's round trip.
fn expect_revoked_refused_and_good_passing(s: &mut Setup, port: u16, clients: &Clients) {
    let refused = exchange_with_certificate(port, &clients.revoked)
        .expect_err("a revoked client certificate must be refused");
    assert!(
        refused.contains("alert certificate revoked"),
        "the client sees OpenSSL's alert: {refused}"
    );
    let line = s.syslog.expect("(client certificate: certificate revoked;");
    assert!(
        line.contains("subject /O=sslwrap tests/CN=revoked client"),
        "{line}"
    );
    assert_eq!(
        exchange_with_certificate(port, &clients.good).expect("the good client passes"),
        b"ping\n"
    );
    let _ = &clients.revoked_identity;
}

#[test]
fn a_revoked_client_certificate_is_refused_and_a_good_one_passes() {
    let mut s = setup("crl-check");
    let clients = clients(&s);
    let inetd = inetd_with(
        &s,
        &[
            "-Verify",
            "1",
            "-CAfile",
            path(&s.pki.ca_pem),
            "-CRLfile",
            path(&clients.crl_file),
            "-crl_check",
        ],
    );
    expect_revoked_refused_and_good_passing(&mut s, inetd.port, &clients);
}

#[test]
fn crl_file_without_crl_check_is_used_all_the_same() {
    let mut s = setup("crl-implied");
    let clients = clients(&s);
    let inetd = inetd_with(
        &s,
        &[
            "-verify",
            "1",
            "-CAfile",
            path(&s.pki.ca_pem),
            "-CRLfile",
            path(&clients.crl_file),
        ],
    );
    expect_revoked_refused_and_good_passing(&mut s, inetd.port, &clients);
}

#[test]
fn hashed_crls_in_capath_are_used_with_crl_check() {
    let mut s = setup("crl-capath");
    let clients = clients(&s);
    let ca_dir = s.dir.path("cas");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(&s.pki.ca_pem, ca_dir.join("ca.pem")).unwrap();
    std::fs::copy(&clients.crl_file, ca_dir.join("ca.crl")).unwrap();
    let rehash = std::process::Command::new("openssl")
        .arg("rehash")
        .arg(&ca_dir)
        .status()
        .unwrap();
    assert!(rehash.success());
    let inetd = inetd_with(
        &s,
        &["-Verify", "1", "-CApath", path(&ca_dir), "-crl_check"],
    );
    expect_revoked_refused_and_good_passing(&mut s, inetd.port, &clients);
}

/// -crl_check_all checks the intermediate too, so it needs the root's CRL as well: both CRLs in one file pass a good
/// client; the intermediate's alone refuses it for want of a CRL.
#[test]
fn crl_check_all_reads_every_crl_of_the_file_and_needs_one_per_ca() {
    let mut s = setup("crl-all");
    let intermediate = issue("client intermediate", Some(&s.pki.ca), true);
    let client = issue("chained client", Some(&intermediate), false);
    let revoked = issue("revoked chained client", Some(&intermediate), false);
    let good_pem = s.dir.path("chained.pem");
    write_client(&good_pem, &client, &[&intermediate.cert]);
    let revoked_pem = s.dir.path("revoked-chained.pem");
    write_client(&revoked_pem, &revoked, &[&intermediate.cert]);
    let both = s.dir.path("both.pem");
    write_crls(
        &both,
        &[
            crl(&s.pki.ca, &[], 30 * DAY),
            crl(&intermediate, &[&revoked.cert], 30 * DAY),
        ],
    );
    let only_intermediate = s.dir.path("intermediate-only.pem");
    write_crls(
        &only_intermediate,
        &[crl(&intermediate, &[&revoked.cert], 30 * DAY)],
    );
    let start = |s: &Setup, crl_file: &Path| {
        inetd_with(
            s,
            &[
                "-Verify",
                "2",
                "-CAfile",
                path(&s.pki.ca_pem),
                "-CRLfile",
                path(crl_file),
                "-crl_check_all",
            ],
        )
    };
    let complete = start(&s, &both);
    assert_eq!(
        exchange_with_certificate(complete.port, &good_pem).expect("both CAs have a CRL"),
        b"ping\n"
    );
    let refused = exchange_with_certificate(complete.port, &revoked_pem).unwrap_err();
    assert!(refused.contains("alert certificate revoked"), "{refused}");
    s.syslog
        .expect("subject /O=sslwrap tests/CN=revoked chained client");
    let incomplete = start(&s, &only_intermediate);
    assert!(exchange_with_certificate(incomplete.port, &good_pem).is_err());
    let line = s
        .syslog
        .expect("client certificate: unable to get certificate CRL");
    assert!(
        line.contains("/O=sslwrap tests/CN=client intermediate at depth 1 of its chain"),
        "{line}"
    );
}

#[test]
fn a_reload_reads_the_crl_file_again() {
    let mut s = setup("crl-reload");
    let clients = clients(&s);
    write_crls(&clients.crl_file, &[crl(&s.pki.ca, &[], 30 * DAY)]);
    let spawned = spawn_daemon(
        "127.0.0.1",
        &as_strs(&s.legacy_line(
            backend(echo),
            &[
                "-Verify",
                "1",
                "-CAfile",
                path(&s.pki.ca_pem),
                "-CRLfile",
                path(&clients.crl_file),
            ],
        )),
        &[],
        &s.syslog,
    );
    let port = spawned.port;
    let daemon = KilledOnDrop(spawned.child);
    let _notifications = spawned.notifications;
    assert_eq!(
        exchange_with_certificate(port, &clients.revoked).expect("not revoked yet"),
        b"ping\n"
    );
    write_crls(
        &clients.crl_file,
        &[crl(&s.pki.ca, &[&clients.revoked_identity.cert], 30 * DAY)],
    );
    send_signal(daemon.0.id(), "HUP");
    s.syslog
        .expect("SIGHUP: certificate, key and CA files reloaded");
    expect_revoked_refused_and_good_passing(&mut s, port, &clients);
}

/// The start-up of an inetd-mode sslwrap with /dev/null as its client: the context is built (or refused), then the
/// missing connection ends it.
fn start_up(s: &mut Setup, extra: &[&str]) -> (Option<i32>, Vec<String>) {
    let line = s.legacy_line(backend(echo), extra);
    let (status, _) = run_to_end(&as_strs(&line), &s.syslog);
    (status.code(), s.syslog.settle().to_vec())
}

#[test]
fn an_expired_crl_is_a_warning_naming_the_file() {
    let mut s = setup("crl-expired");
    let expired = s.dir.path("expired.pem");
    write_crls(&expired, &[crl(&s.pki.ca, &[], -60)]);
    let ca = s.pki.ca_pem.clone();
    let (_, lines) = start_up(
        &mut s,
        &[
            "-Verify",
            "1",
            "-CAfile",
            path(&ca),
            "-CRLfile",
            path(&expired),
        ],
    );
    let warning = format!(
        "-CRLfile: the CRL of /O=sslwrap tests/CN=sslwrap test CA in {} expired on",
        expired.display()
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains(&warning) && line.contains("'CRL has expired'")),
        "{lines:#?}"
    );
    let fresh = s.dir.path("fresh.pem");
    write_crls(&fresh, &[crl(&s.pki.ca, &[], 30 * DAY)]);
    s.syslog.lines.clear();
    let (_, lines) = start_up(
        &mut s,
        &[
            "-Verify",
            "1",
            "-CAfile",
            path(&ca),
            "-CRLfile",
            path(&fresh),
        ],
    );
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("-CRLfile: the CRL of")),
        "{lines:#?}"
    );
}

#[test]
fn a_crl_file_without_a_crl_is_a_start_up_error_naming_it() {
    let mut s = setup("crl-none");
    let ca = s.pki.ca_pem.clone();
    let (status, lines) = start_up(
        &mut s,
        &["-Verify", "1", "-CAfile", path(&ca), "-CRLfile", path(&ca)],
    );
    assert_eq!(status, Some(1));
    let error = format!("-CRLfile: no CRL found in {}", ca.display());
    assert!(lines.iter().any(|line| line.contains(&error)), "{lines:#?}");
}

#[test]
fn crl_check_without_any_crl_is_a_start_up_error() {
    let mut s = setup("crl-missing");
    let ca = s.pki.ca_pem.clone();
    let (status, lines) = start_up(
        &mut s,
        &["-Verify", "1", "-CAfile", path(&ca), "-crl_check"],
    );
    assert_eq!(status, Some(1));
    assert!(
        lines.iter().any(|line| line.contains(
            "-crl_check: no CRL to check client certificates against: -CRLfile is not given and there is no -CApath"
        )),
        "{lines:#?}"
    );
    let empty_dir = s.dir.path("no-crls");
    std::fs::create_dir(&empty_dir).unwrap();
    let (status, lines) = start_up(
        &mut s,
        &[
            "-Verify",
            "1",
            "-CApath",
            path(&empty_dir),
            "-crl_check_all",
        ],
    );
    assert_eq!(status, Some(1));
    let error = format!("-CApath {} holds no hashed CRL", empty_dir.display());
    assert!(lines.iter().any(|line| line.contains(&error)), "{lines:#?}");
}

#[test]
fn crl_options_without_verify_are_refused() {
    let mut s = setup("crl-noverify");
    let crl_file = s.dir.path("crl.pem");
    write_crls(&crl_file, &[crl(&s.pki.ca, &[], 30 * DAY)]);
    let (status, lines) = start_up(&mut s, &["-CRLfile", path(&crl_file)]);
    assert_eq!(status, Some(1));
    assert!(
        lines
            .iter()
            .any(|line| line.contains("option -CRLfile needs -verify or -Verify")),
        "{lines:#?}"
    );
}
