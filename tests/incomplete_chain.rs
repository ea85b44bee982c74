//! The start-up (and reload) warning for a certificate sent without its issuer: a leaf issued by an intermediate and
//! alone in its -cert file is named in a warning, while a leaf followed by its intermediate, a self-signed
//! certificate and a leaf whose issuer is in the system trust store (SSL_CERT_FILE, as OpenSSL reads it) get none.
//! Certificates are made here with the `openssl` crate; every run is bounded.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

const WARNING: &str = "is sent without the certificate of its issuer";

/// Writes the certificate, the chain after it and the key into `path`, mode 600.
fn write_cert_file(path: &Path, identity: &Identity, chain: &[&Identity]) {
    use std::os::unix::fs::PermissionsExt;
    let mut pem = identity.cert.to_pem().unwrap();
    for certificate in chain {
        pem.extend(certificate.cert.to_pem().unwrap());
    }
    pem.extend(identity.key.private_key_to_pem_pkcs8().unwrap());
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What an inetd-mode start-up with `cert` logs (with /dev/null as the client, the missing connection then ends it),
/// with `system_store` as OpenSSL's default CA file when given.
fn start_up_log(cert: &Path, system_store: Option<&Path>) -> Vec<String> {
    let log_dir = TempDir::new("chain-log");
    let mut syslog = Syslog::new(&log_dir);
    let mut command = sslwrap(&["-cert", cert.to_str().unwrap(), "-port", "143"], &syslog);
    if let Some(store) = system_store {
        command.env("SSL_CERT_FILE", store);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_with_timeout(&mut child, Duration::from_secs(20)).expect("sslwrap did not exit");
    syslog.settle().to_vec()
}

fn warnings_naming(lines: &[String], cert: &Path) -> Vec<String> {
    let named = format!("-cert: the certificate in {} {WARNING}", cert.display());
    lines
        .iter()
        .filter(|line| line.contains(&named))
        .cloned()
        .collect()
}

#[test]
fn a_leaf_without_its_intermediate_is_named_and_a_complete_or_self_signed_one_is_not() {
    let dir = TempDir::new("chain");
    let root = issue("chain test root", None, true);
    let intermediate = issue("chain test intermediate", Some(&root), true);
    let leaf = issue("localhost", Some(&intermediate), false);

    let alone = dir.path("cert.pem");
    write_cert_file(&alone, &leaf, &[]);
    let lines = start_up_log(&alone, None);
    let warnings = warnings_naming(&lines, &alone);
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert!(
        warnings[0].contains("(/O=sslwrap tests/CN=chain test intermediate)")
            && warnings[0].contains("'unable to verify the first certificate'")
            && warnings[0].contains("fullchain.pem, not cert.pem"),
        "{warnings:?}"
    );

    let full = dir.path("fullchain.pem");
    write_cert_file(&full, &leaf, &[&intermediate]);
    let lines = start_up_log(&full, None);
    assert!(
        !lines.iter().any(|line| line.contains(WARNING)),
        "{lines:#?}"
    );

    let self_signed = dir.path("self-signed.pem");
    write_cert_file(&self_signed, &issue("localhost", None, false), &[]);
    let lines = start_up_log(&self_signed, None);
    assert!(
        !lines.iter().any(|line| line.contains(WARNING)),
        "{lines:#?}"
    );
}

/// A leaf issued directly by a root that the system trust store holds is complete: clients have that root, and a
/// root sent along would change nothing. The same leaf with its root unknown gets the warning.
#[test]
fn a_leaf_issued_by_a_root_in_the_system_store_gets_no_warning() {
    let dir = TempDir::new("chain-system");
    let root = issue("chain test system root", None, true);
    let store = dir.path("system-store.pem");
    std::fs::write(&store, root.cert.to_pem().unwrap()).unwrap();
    let cert = dir.path("direct.pem");
    write_cert_file(&cert, &issue("localhost", Some(&root), false), &[]);
    let lines = start_up_log(&cert, Some(&store));
    assert!(
        !lines.iter().any(|line| line.contains(WARNING)),
        "{lines:#?}"
    );
    let lines = start_up_log(&cert, None);
    assert_eq!(warnings_naming(&lines, &cert).len(), 1, "{lines:#?}");
}

/// A SIGHUP reload checks the new file too: a renewal that installed the leaf alone is named in a warning.
#[test]
fn a_reload_warns_about_a_renewed_certificate_sent_without_its_intermediate() {
    let dir = TempDir::new("chain-reload");
    let mut syslog = Syslog::new(&dir);
    let root = issue("chain test root", None, true);
    let intermediate = issue("chain test intermediate", Some(&root), true);
    let cert = dir.path("fullchain.pem");
    write_cert_file(
        &cert,
        &issue("localhost", Some(&intermediate), false),
        &[&intermediate],
    );
    let spawned = spawn_daemon(
        "127.0.0.1",
        &["-cert", cert.to_str().unwrap(), "-port", "143"],
        &[],
        &syslog,
    );
    let daemon = KilledOnDrop(spawned.child);
    let _notifications = spawned.notifications;
    assert!(
        !syslog.settle().iter().any(|line| line.contains(WARNING)),
        "{:#?}",
        syslog.lines
    );
    write_cert_file(&cert, &issue("localhost", Some(&intermediate), false), &[]);
    send_signal(daemon.0.id(), "HUP");
    syslog.expect("SIGHUP: certificate, key and CA files reloaded");
    assert_eq!(
        warnings_naming(syslog.settle(), &cert).len(),
        1,
        "{:#?}",
        syslog.lines
    );
}
