//! Start-up behaviour of the real binary: the command line's errors and messages, bad certificate and key files,
//! -version/-help, and that it links the system OpenSSL. Each failure must exit 1 with a message naming the cause,
//! logged to syslog with ident sslwrap.

mod common;

use common::*;

fn setup(name: &str) -> (TempDir, Syslog) {
    let dir = TempDir::new(name);
    let syslog = Syslog::new(&dir);
    (dir, syslog)
}

#[test]
fn unknown_option_logs_prints_usage_and_exits_1() {
    let (_dir, mut syslog) = setup("unknown");
    let (status, stderr) = run_to_end(&["-port", "143", "-bogus"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("sslwrap: unknown option -bogus"),
        "{stderr}"
    );
    assert!(stderr.contains("usage: sslwrap"), "{stderr}");
    let line = syslog.expect("unknown option -bogus");
    assert!(line.starts_with("<11>sslwrap["), "{line}");
}

#[test]
fn port_and_exec_validation_messages() {
    let (_dir, mut syslog) = setup("validate");
    let (status, stderr) = run_to_end(&["-port", "1", "-exec", "/bin/cat"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("options -port and -exec are incompatible"));
    let (status, stderr) = run_to_end(&["-cert", "x.pem"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("one of -port or -exec must be supplied"));
    syslog.expect("one of -port or -exec must be supplied");
}

#[test]
fn missing_value_at_the_end_is_an_error() {
    let (_dir, syslog) = setup("novalue");
    let (status, stderr) = run_to_end(&["-port"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("option -port needs a value"), "{stderr}");
}

#[test]
fn missing_certificate_file_is_named() {
    let (dir, mut syslog) = setup("nocertfile");
    let missing = dir.path("missing.pem");
    let (status, stderr) = run_to_end(
        &["-cert", missing.to_str().unwrap(), "-port", "143"],
        &syslog,
    );
    assert_eq!(status.code(), Some(1));
    let expected = format!(
        "cannot read {}: No such file or directory",
        missing.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    syslog.expect(&expected);
}

#[test]
fn default_certificate_is_server_pem_in_the_current_directory() {
    let (dir, syslog) = setup("defaultcert");
    let (status, _) = {
        let mut child = sslwrap(&["-port", "143"], &syslog)
            .current_dir(&dir.0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_with_timeout(&mut child, std::time::Duration::from_secs(10)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
        assert!(text.contains("-cert: cannot read server.pem"), "{text}");
        (status, text)
    };
    assert_eq!(status.code(), Some(1));
}

#[test]
fn encrypted_key_is_a_clear_error() {
    let (dir, mut syslog) = setup("encrypted");
    let identity = issue("localhost", None, false);
    let path = dir.path("encrypted.pem");
    let mut pem = identity.cert.to_pem().unwrap();
    pem.extend(
        identity
            .key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"secret")
            .unwrap(),
    );
    std::fs::write(&path, pem).unwrap();
    let (status, stderr) = run_to_end(&["-cert", path.to_str().unwrap(), "-port", "143"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "the private key in {} is encrypted",
            path.display()
        )),
        "{stderr}"
    );
    syslog.expect("is encrypted with a pass phrase");
}

#[test]
fn key_that_does_not_match_the_certificate_is_named() {
    let (dir, syslog) = setup("mismatch");
    let one = issue("one", None, false);
    let two = issue("two", None, false);
    let cert = dir.path("cert.pem");
    let key = dir.path("key.pem");
    std::fs::write(&cert, one.cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key, two.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let (status, stderr) = run_to_end(
        &[
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-port",
            "143",
        ],
        &syslog,
    );
    assert_eq!(status.code(), Some(1));
    let expected = format!(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn invalid_cipher_list_is_a_startup_error() {
    let (_dir, mut syslog) = setup("badcipher");
    let (status, stderr) = run_to_end(
        &["-nocert", "-port", "143", "-cipher", "NOT-A-CIPHER"],
        &syslog,
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("-cipher 'NOT-A-CIPHER': OpenSSL accepts none of these ciphers"),
        "{stderr}"
    );
    syslog.expect("-cipher 'NOT-A-CIPHER'");
}

#[test]
fn ssl2_and_ssl3_name_the_linked_openssl() {
    let (_dir, syslog) = setup("oldssl");
    let (status, stderr) = run_to_end(&["-nocert", "-port", "143", "-ssl2"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("-ssl2: SSLv2 is not supported by OpenSSL 3"),
        "{stderr}"
    );
    let (status, stderr) = run_to_end(&["-nocert", "-port", "143", "-ssl3"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("-ssl3: SSLv3 is not available: OpenSSL 3"),
        "{stderr}"
    );
}

#[test]
fn world_readable_key_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, mut syslog) = setup("keymode");
    let pki = Pki::new(&dir);
    std::fs::set_permissions(&pki.server_pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    // inetd mode with /dev/null as the "client": starts, warns, then fails on the missing connection.
    let _ = run_to_end(
        &["-cert", pki.server_pem.to_str().unwrap(), "-port", "143"],
        &syslog,
    );
    let line = syslog.expect("is readable by group or others (mode 644)");
    assert!(line.contains(pki.server_pem.to_str().unwrap()));
}

#[test]
fn version_names_sslwrap_and_openssl() {
    let output = std::process::Command::new(BINARY)
        .arg("-version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("sslwrap 3."), "{text}");
    assert!(text.contains("OpenSSL 3"), "{text}");
}

#[test]
fn help_lists_the_legacy_options() {
    let output = std::process::Command::new(BINARY)
        .arg("-help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for option in [
        "-port", "-addr", "-accept", "-exec", "-cert", "-key", "-nocert", "-verify", "-Verify",
        "-CAfile",
    ] {
        assert!(
            text.contains(&format!("  {option} ")),
            "{option} missing from -help"
        );
    }
}

#[test]
fn links_the_system_libssl() {
    let output = std::process::Command::new("ldd")
        .arg(BINARY)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let libssl = text
        .lines()
        .find(|line| line.contains("libssl.so"))
        .expect("libssl in ldd output");
    assert!(
        libssl.contains("=> /lib/") || libssl.contains("=> /usr/lib/"),
        "{libssl}"
    );
}

#[test]
fn certificate_at_a_path_that_is_not_utf8_is_loaded() {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let (dir, syslog) = setup("rawpath");
    let pki = Pki::new(&dir);
    let cert = dir.0.join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.pem"));
    std::fs::copy(&pki.server_pem, &cert).unwrap();
    // The inetd stand-in takes text; a script execs sslwrap with the raw path, as an inetd.conf line can hold it.
    let mut script = b"#!/bin/sh\nexec '".to_vec();
    script.extend(BINARY.as_bytes());
    script.extend(b"' -cert '");
    script.extend(cert.as_os_str().as_bytes());
    script.extend(b"' -exec /bin/echo loaded\n");
    let script_path = dir.path("raw-path.sh");
    std::fs::File::create(&script_path)
        .and_then(|mut file| file.write_all(&script))
        .unwrap();
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inetd = Inetd::start_command("127.0.0.1:0", script_path.to_str().unwrap(), &[], &syslog);
    let mut client = tls(inetd.port);
    let served = client
        .ssl()
        .peer_certificate()
        .expect("a server certificate");
    assert_eq!(
        served.to_der().unwrap(),
        pki.server.cert.to_der().unwrap(),
        "the certificate from the file is served"
    );
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"loaded\n");
}
