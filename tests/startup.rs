//! Start-up behaviour of the real binary: the command line's errors and messages, bad certificate and key files
//! (devices, FIFOs, files over the size limit, every key layout), -version/-help, and that it links the system
//! OpenSSL. Each failure must exit 1 with a message naming the option and the cause, logged to syslog with ident
//! sslwrap, and never hang: every run is bounded.

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
    let (status, stderr) = run_to_end(&["-port", "143", "-frobnicate"], &syslog);
    assert_eq!(status.code(), Some(1));
    // The error, the one-line synopsis and where the rest is: nothing that scrolls the error off the screen.
    assert_eq!(
        stderr,
        "sslwrap: unknown option -frobnicate\n\
         usage: sslwrap [-cert FILE | -nocert] (-port PORT [-addr ADDR] | -exec PROG [ARGS] | -fd N) [-accept \
         [ADDR:]PORT] [options]\n\
         sslwrap -help lists every option\n"
    );
    let line = syslog.expect("unknown option -frobnicate");
    assert!(line.starts_with("<11>sslwrap["), "{line}");
}

#[test]
fn a_typo_gets_the_option_it_was_meant_to_be() {
    let (_dir, syslog) = setup("typo");
    let (status, stderr) = run_to_end(&["-prot", "143"], &syslog);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with("sslwrap: unknown option -prot\ndid you mean -port?\nusage: sslwrap "),
        "{stderr}"
    );
}

#[test]
fn double_dash_help_and_version_work() {
    let (_dir, syslog) = setup("gnu-style");
    let help = sslwrap(&["--help"], &syslog).output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.starts_with("usage: sslwrap "), "{text}");
    assert!(text.contains("-accept"), "{text}");
    let version = sslwrap(&["--version"], &syslog).output().unwrap();
    assert!(version.status.success());
    let text = String::from_utf8(version.stdout).unwrap();
    assert!(text.starts_with("sslwrap 3."), "{text}");
}

#[test]
fn every_malformed_accept_value_is_named_at_start_up() {
    let s = common::setup("accept-forms");
    let cert = s.pki.server_pem.to_str().unwrap();
    for (value, message) in [
        (
            "[::1]",
            "-accept: no port after [::1] in '[::1]'; write [::1]:PORT",
        ),
        (
            "::1",
            "-accept: '::1' looks like an IPv6 address; write it in brackets with a port: [::1]:PORT",
        ),
        ("70000", "-accept: port 70000 is out of range (1-65535)"),
        (
            "127.0.0.1:no-such-service",
            "-accept: unknown service 'no-such-service' (not a number, not a tcp service in /etc/services)",
        ),
    ] {
        let (status, stderr) =
            run_to_end(&["-cert", cert, "-port", "1", "-accept", value], &s.syslog);
        assert_eq!(status.code(), Some(1), "{value}");
        assert!(stderr.contains(message), "{value}: {stderr}");
    }
}

#[test]
fn a_pidfile_that_cannot_be_written_or_is_given_in_inetd_mode_is_a_startup_error() {
    let s = common::setup("pidfile-errors");
    let cert = s.pki.server_pem.to_str().unwrap();
    let precious = s.dir.path("precious");
    std::fs::write(&precious, "not to be overwritten\n").unwrap();
    let link = s.dir.path("link.pid");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let missing = s.dir.path("no-such-dir/sslwrap.pid");
    for (pidfile, message) in [
        (
            missing.to_str().unwrap(),
            format!(
                "-pidfile: cannot write {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            link.to_str().unwrap(),
            format!(
                "-pidfile: cannot write {}: Too many levels of symbolic links",
                link.display()
            ),
        ),
    ] {
        let accept = format!("127.0.0.1:{}", common::free_port_on("127.0.0.1"));
        let (status, stderr) = run_to_end(
            &[
                "-cert", cert, "-port", "1", "-accept", &accept, "-pidfile", pidfile,
            ],
            &s.syslog,
        );
        assert_eq!(status.code(), Some(1), "{pidfile}: {stderr}");
        assert!(stderr.contains(&message), "{pidfile}: {stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "not to be overwritten\n"
    );
    let (status, stderr) = run_to_end(
        &[
            "-cert",
            cert,
            "-port",
            "1",
            "-pidfile",
            missing.to_str().unwrap(),
        ],
        &s.syslog,
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "-pidfile is for daemon mode (-accept, or the listening sockets of socket activation)"
        ),
        "{stderr}"
    );
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
            "-cert: the private key in {} is encrypted",
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

/// The message a file option gives for what it refuses, on stderr and in the log, with exit status 1; a bounded wait
/// (run_to_end fails the test after 20 s), so a start-up that blocks on the file fails too.
fn refused_with(args: &[&str], expected: &str, syslog: &mut Syslog) {
    let (status, stderr) = run_to_end(args, syslog);
    assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    syslog.expect(expected);
}

#[test]
fn devices_are_refused_for_every_file_option() {
    let (dir, mut syslog) = setup("devices");
    let pki = Pki::new(&dir);
    let cert = pki.server_pem.to_str().unwrap();
    refused_with(
        &["-cert", "/dev/zero", "-port", "143"],
        "-cert: /dev/zero is not a regular file",
        &mut syslog,
    );
    refused_with(
        &["-cert", cert, "-key", "/dev/urandom", "-port", "143"],
        "-key: /dev/urandom is not a regular file",
        &mut syslog,
    );
    refused_with(
        &["-cert", cert, "-dhparam", "/dev/zero", "-port", "143"],
        "-dhparam: /dev/zero is not a regular file",
        &mut syslog,
    );
    refused_with(
        &[
            "-cert",
            cert,
            "-verify",
            "1",
            "-CAfile",
            "/dev/zero",
            "-port",
            "143",
        ],
        "-CAfile: /dev/zero is not a regular file",
        &mut syslog,
    );
    refused_with(
        &[
            "-cert",
            cert,
            "-verify",
            "1",
            "-CApath",
            "/dev/zero",
            "-port",
            "143",
        ],
        "-CApath: /dev/zero is not a directory",
        &mut syslog,
    );
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let (dir, mut syslog) = setup("fifo");
    let pki = Pki::new(&dir);
    let fifo = dir.path("cert.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    refused_with(
        &["-cert", fifo, "-port", "143"],
        &format!("-cert: {fifo} is not a regular file"),
        &mut syslog,
    );
    refused_with(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-key",
            fifo,
            "-port",
            "143",
        ],
        &format!("-key: {fifo} is not a regular file"),
        &mut syslog,
    );
}

#[test]
fn files_over_the_size_limit_are_refused_and_one_at_it_is_read() {
    let (dir, mut syslog) = setup("oversize");
    let pki = Pki::new(&dir);
    let limit = 4 << 20;
    let over = dir.path("over.pem");
    std::fs::File::create(&over)
        .unwrap()
        .set_len(limit + 1)
        .unwrap();
    let over = over.to_str().unwrap();
    let cert = pki.server_pem.to_str().unwrap();
    for (option, mut args) in [
        ("-cert", vec!["-cert", over]),
        ("-key", vec!["-cert", cert, "-key", over]),
        ("-dhparam", vec!["-cert", cert, "-dhparam", over]),
        (
            "-CAfile",
            vec!["-cert", cert, "-verify", "1", "-CAfile", over],
        ),
    ] {
        args.extend(["-port", "143"]);
        refused_with(
            &args,
            &format!("{option}: {over} is larger than 4 MiB"),
            &mut syslog,
        );
    }
    let at_limit = dir.path("at-limit.pem");
    std::fs::File::create(&at_limit)
        .unwrap()
        .set_len(limit)
        .unwrap();
    let at_limit = at_limit.to_str().unwrap();
    refused_with(
        &["-cert", at_limit, "-port", "143"],
        &format!("-cert: no certificate found in {at_limit}"),
        &mut syslog,
    );
}

/// Symbolic links are followed: the checks apply to the file they lead to, and a link to a good file serves.
#[test]
fn symlinks_to_good_files_still_work() {
    let s = common::setup("symlinks");
    let cert = s.dir.path("cert.pem");
    let key = s.dir.path("key.pem");
    std::fs::write(&cert, s.pki.server.cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key, s.pki.server.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let cert_link = s.dir.path("cert-link.pem");
    let key_link = s.dir.path("key-link.pem");
    let ca_link = s.dir.path("ca-link.pem");
    std::os::unix::fs::symlink(&cert, &cert_link).unwrap();
    std::os::unix::fs::symlink(&key, &key_link).unwrap();
    std::os::unix::fs::symlink(&s.pki.ca_pem, &ca_link).unwrap();
    let backend_port = backend(echo).to_string();
    let inetd = Inetd::start(
        &[
            "-cert",
            cert_link.to_str().unwrap(),
            "-key",
            key_link.to_str().unwrap(),
            "-verify",
            "1",
            "-CAfile",
            ca_link.to_str().unwrap(),
            "-port",
            &backend_port,
        ],
        &s.syslog,
    );
    let mut client = try_tls(inetd.port, |builder| {
        builder.set_ca_file(&s.pki.ca_pem).unwrap();
        builder.set_verify(openssl::ssl::SslVerifyMode::PEER);
    })
    .unwrap();
    std::io::Write::write_all(&mut client, b"linked").unwrap();
    let mut reply = [0u8; 6];
    std::io::Read::read_exact(&mut client, &mut reply).unwrap();
    assert_eq!(&reply, b"linked");
}

/// The documented single file (certificate and key together) is read once: the bytes the process has read stay
/// near one file's size, where reading it for the certificate and again for the key came to twice that.
#[test]
fn the_combined_certificate_and_key_file_is_read_once() {
    let s = common::setup("read-once");
    let combined = s.dir.path("combined.pem");
    // Text before the first PEM block is ignored by OpenSSL; it makes the file large enough to weigh.
    let mut contents = "padding, not PEM\n".repeat(128 * 1024).into_bytes();
    contents.extend(std::fs::read(&s.pki.server_pem).unwrap());
    std::fs::write(&combined, &contents).unwrap();
    let inetd = Inetd::start(
        &[
            "-cert",
            combined.to_str().unwrap(),
            "-port",
            &backend(echo).to_string(),
        ],
        &s.syslog,
    );
    let mut client = tls(inetd.port);
    std::io::Write::write_all(&mut client, b"once").unwrap();
    let mut reply = [0u8; 4];
    std::io::Read::read_exact(&mut client, &mut reply).unwrap();
    let pid = inetd.children.lock().unwrap()[0].id();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let read: usize = io
        .lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        read >= contents.len() && read < contents.len() * 3 / 2,
        "read {read} bytes for a file of {}",
        contents.len()
    );
}

#[test]
fn every_file_message_names_the_option_first() {
    let (dir, mut syslog) = setup("wording");
    let pki = Pki::new(&dir);
    let cert = pki.server_pem.to_str().unwrap();
    refused_with(
        &["-cert", cert, "-key", "", "-port", "143"],
        "-key: cannot read : No such file or directory",
        &mut syslog,
    );
    let cert_only = dir.path("cert-only.pem");
    std::fs::write(&cert_only, pki.server.cert.to_pem().unwrap()).unwrap();
    let cert_only = cert_only.to_str().unwrap();
    refused_with(
        &["-cert", cert_only, "-port", "143"],
        &format!("-cert: no private key found in {cert_only} (use -key FILE"),
        &mut syslog,
    );
    refused_with(
        &["-cert", cert, "-key", cert_only, "-port", "143"],
        &format!("-key: no private key found in {cert_only}"),
        &mut syslog,
    );
    let garbage = dir.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let garbage = garbage.to_str().unwrap();
    refused_with(
        &["-cert", cert, "-key", garbage, "-port", "143"],
        &format!("-key: cannot read the private key in {garbage}: "),
        &mut syslog,
    );
    refused_with(
        &["-nocert", "-dhparam", cert, "-port", "143"],
        &format!("-dhparam: no DH parameters in {cert}: "),
        &mut syslog,
    );
    refused_with(
        &[
            "-nocert", "-verify", "1", "-CAfile", garbage, "-port", "143",
        ],
        &format!("-CAfile: no certificate found in {garbage}"),
        &mut syslog,
    );
}

/// Where the key sits and how it is written. With a client that verifies the server against the CA, a handshake
/// proves that the key in use is the one in the file; the -debug line says which of OpenSSL's decoders read it.
#[test]
fn key_files_in_every_usual_layout_sign_the_handshake() {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    let mut s = common::setup("key-layouts");
    let ec = |curve| {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(curve).unwrap()).unwrap())
            .unwrap()
    };
    let sec1 = |key: &PKey<Private>| key.ec_key().unwrap().private_key_to_pem().unwrap();
    let pkcs8 = |key: &PKey<Private>| key.private_key_to_pem_pkcs8().unwrap();
    let rsa_pss = {
        let path = s.dir.path("rsa-pss.key");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA-PSS",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(made.success());
        PKey::private_key_from_pem(&std::fs::read(&path).unwrap()).unwrap()
    };
    let p256_parameters =
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    // (name, key, how the key is written, key in its own -key file, key before the certificate, read directly)
    type Layout = (&'static str, PKey<Private>, Vec<u8>, bool, bool, bool);
    let mut layouts: Vec<Layout> = Vec::new();
    let key = ec(Nid::SECP384R1);
    layouts.push((
        "EC P-384 SEC1, -key",
        key.clone(),
        sec1(&key),
        true,
        false,
        true,
    ));
    let key = ec(Nid::SECP521R1);
    layouts.push((
        "EC P-521 PKCS#8, -key",
        key.clone(),
        pkcs8(&key),
        true,
        false,
        true,
    ));
    let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let pkcs1 = key.rsa().unwrap().private_key_to_pem().unwrap();
    layouts.push(("RSA PKCS#1, -key", key, pkcs1, true, false, true));
    let key = ec(Nid::X9_62_PRIME256V1);
    layouts.push((
        "EC P-256 PKCS#8 before the certificate",
        key.clone(),
        pkcs8(&key),
        false,
        true,
        true,
    ));
    let key = ec(Nid::X9_62_PRIME256V1);
    let mut with_parameters = p256_parameters.as_bytes().to_vec();
    with_parameters.extend(sec1(&key));
    layouts.push((
        "EC PARAMETERS, then SEC1 (openssl ecparam -genkey)",
        key,
        with_parameters,
        false,
        true,
        true,
    ));
    let key = PKey::generate_ed448().unwrap();
    layouts.push((
        "Ed448 PKCS#8, -key",
        key.clone(),
        pkcs8(&key),
        true,
        false,
        false,
    ));
    layouts.push((
        "RSA-PSS PKCS#8",
        rsa_pss.clone(),
        pkcs8(&rsa_pss),
        false,
        false,
        false,
    ));
    for (number, (name, key, key_pem, own_file, key_first, read_directly)) in
        layouts.into_iter().enumerate()
    {
        let identity = issue_with_key("localhost", Some(&s.pki.ca), false, key);
        let cert_path = s.dir.path(&format!("layout-{number}.pem"));
        let key_path = s.dir.path(&format!("layout-{number}.key"));
        let cert_pem = identity.cert.to_pem().unwrap();
        let mut args = vec!["-cert".to_string(), cert_path.to_str().unwrap().to_string()];
        if own_file {
            std::fs::write(&cert_path, &cert_pem).unwrap();
            std::fs::write(&key_path, &key_pem).unwrap();
            args.extend(["-key".to_string(), key_path.to_str().unwrap().to_string()]);
        } else if key_first {
            std::fs::write(&cert_path, [key_pem, cert_pem].concat()).unwrap();
        } else {
            std::fs::write(&cert_path, [cert_pem, key_pem].concat()).unwrap();
        }
        args.extend([
            "-port".to_string(),
            backend(echo).to_string(),
            "-debug".to_string(),
        ]);
        let inetd = Inetd::start(&common::as_strs(&args), &s.syslog);
        let mut client = try_tls(inetd.port, |builder| {
            builder.set_ca_file(&s.pki.ca_pem).unwrap();
            builder.set_verify(openssl::ssl::SslVerifyMode::PEER);
        })
        .unwrap_or_else(|error| panic!("{name}: {error}"));
        std::io::Write::write_all(&mut client, b"signed").unwrap();
        let mut reply = [0u8; 6];
        std::io::Read::read_exact(&mut client, &mut reply).unwrap();
        assert_eq!(&reply, b"signed", "{name}");
        let key_file = if own_file { &key_path } else { &cert_path };
        let direct_line = format!("key in {} read directly", key_file.display());
        let logged = s
            .syslog
            .settle()
            .iter()
            .any(|line| line.contains(&direct_line));
        assert_eq!(logged, read_directly, "{name}");
    }
}

/// -CAfile's subject names reach the client as the acceptable CA list, each once, though sslwrap now reads the
/// file itself.
#[test]
fn the_cafile_names_are_sent_as_acceptable_cas() {
    let s = common::setup("ca-list");
    let other_ca = issue("second test CA", None, true);
    let ca_file = s.dir.path("cas.pem");
    let mut cas = s.pki.ca.cert.to_pem().unwrap();
    cas.extend(other_ca.cert.to_pem().unwrap());
    cas.extend(s.pki.ca.cert.to_pem().unwrap());
    std::fs::write(&ca_file, cas).unwrap();
    let inetd = Inetd::start(
        &[
            "-cert",
            s.pki.server_pem.to_str().unwrap(),
            "-verify",
            "1",
            "-CAfile",
            ca_file.to_str().unwrap(),
            "-port",
            &backend(echo).to_string(),
        ],
        &s.syslog,
    );
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", inetd.port)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut client, std::time::Duration::from_secs(20));
    assert!(status.is_some(), "s_client did not finish");
    let mut output = String::new();
    std::io::Read::read_to_string(&mut client.stdout.take().unwrap(), &mut output).unwrap();
    let list = output
        .split("Acceptable client certificate CA names")
        .nth(1)
        .unwrap_or_else(|| panic!("no CA list in {output}"));
    let list: Vec<&str> = list
        .lines()
        .skip(1)
        .take_while(|line| line.contains("CN"))
        .collect();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list[0].contains("CN = sslwrap test CA"), "{list:?}");
    assert!(list[1].contains("CN = second test CA"), "{list:?}");
}

/// A SIGHUP reload reads the files again with the same checks: a certificate path that now leads to a device fails
/// the reload at once, and the daemon goes on serving with the certificate it had.
#[test]
fn a_reload_refuses_a_device_and_keeps_serving() {
    let mut s = common::setup("reload-device");
    let cert = s.dir.path("reloaded.pem");
    std::fs::copy(&s.pki.server_pem, &cert).unwrap();
    let backend_port = backend(echo).to_string();
    let spawned = spawn_daemon(
        "127.0.0.1",
        &["-cert", cert.to_str().unwrap(), "-port", &backend_port],
        &[],
        &s.syslog,
    );
    let port = spawned.port;
    let daemon = KilledOnDrop(spawned.child);
    let _notifications = spawned.notifications;
    std::fs::remove_file(&cert).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cert).unwrap();
    send_signal(daemon.0.id(), "HUP");
    let line = s.syslog.expect("SIGHUP: reload failed");
    assert!(
        line.contains(&format!("-cert: {} is not a regular file", cert.display())),
        "{line}"
    );
    let mut client = tls(port);
    std::io::Write::write_all(&mut client, b"still").unwrap();
    let mut reply = [0u8; 5];
    std::io::Read::read_exact(&mut client, &mut reply).unwrap();
    assert_eq!(&reply, b"still");
}
