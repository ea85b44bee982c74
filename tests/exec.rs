//! `-exec PROG [ARGS]` end to end, in inetd and daemon mode: the program's stdin/stdout carry the session, its
//! arguments follow the legacy rules, the connection facts are in its environment, a client certificate's names are
//! passed on, and a program that cannot run is one log line and a clean close for the client.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use openssl::ssl::SslFiletype;

fn setup(name: &str) -> (TempDir, Syslog, Pki) {
    let dir = TempDir::new(name);
    let syslog = Syslog::new(&dir);
    let pki = Pki::new(&dir);
    (dir, syslog, pki)
}

fn script(dir: &TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn cat_echoes_and_half_close_ends_the_program() {
    let (_dir, _syslog, pki) = setup("cat");
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-exec",
            "/bin/cat",
        ],
        &_syslog,
    );
    let mut client = tls(inetd.port);
    let data = pattern(64 * 1024, 11);
    client.write_all(&data).unwrap();
    let mut echoed = vec![0u8; data.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, data);
    client.shutdown().unwrap();
    assert_eq!(
        read_to_close_notify(&mut client).unwrap(),
        b"",
        "cat exits on EOF, sslwrap sends close_notify"
    );
    assert!(inetd.wait_children().iter().all(|status| status.success()));
}

#[test]
fn arguments_one_word_then_words_and_after_double_dash() {
    let (dir, syslog, pki) = setup("args");
    let program = script(
        &dir,
        "args.sh",
        "for a in \"$@\"; do printf '[%s]' \"$a\"; done; echo",
    );
    let cert = pki.server_pem.to_str().unwrap();
    let plain = Inetd::start(
        &["-cert", cert, "-exec", &program, "one", "two", "-debug"],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(plain.port)).unwrap(),
        b"[one][two]\n"
    );
    let dashed = Inetd::start(
        &[
            "-cert", cert, "-exec", &program, "x", "--", "-cert", "-debug",
        ],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(dashed.port)).unwrap(),
        b"[x][-cert][-debug]\n"
    );
}

/// Starts sslwrap under the inetd stand-in with `args` exactly as given, bytes that are not UTF-8 included, as an
/// inetd.conf line can hold them: the stand-in takes text, so a shell script execs sslwrap with the raw words.
fn inetd_with_raw_args(dir: &TempDir, syslog: &Syslog, args: &[&[u8]]) -> Inetd {
    use std::os::unix::fs::PermissionsExt;
    let mut body = b"#!/bin/sh\nexec".to_vec();
    for word in std::iter::once(BINARY.as_bytes()).chain(args.iter().copied()) {
        body.extend(b" '");
        for &byte in word {
            match byte {
                b'\'' => body.extend(b"'\\''"),
                _ => body.push(byte),
            }
        }
        body.push(b'\'');
    }
    body.push(b'\n');
    let path = dir.path("raw-args.sh");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Inetd::start_command("127.0.0.1:0", path.to_str().unwrap(), &[], syslog)
}

#[test]
fn arguments_that_are_not_utf8_reach_the_program_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, syslog, pki) = setup("raw-args");
    let before: &[u8] = b"caf\xe9";
    let after: &[u8] = b"-debug \xff\xfe\x80 it's";
    let inetd = inetd_with_raw_args(
        &dir,
        &syslog,
        &[
            b"-cert",
            pki.server_pem.as_os_str().as_bytes(),
            b"-exec",
            b"/bin/echo",
            before,
            b"--",
            after,
        ],
    );
    let expected = [before, b" ", after, b"\n"].concat();
    assert_eq!(
        read_to_close_notify(&mut tls(inetd.port)).unwrap(),
        expected
    );
}

#[test]
fn environment_carries_the_connection_facts_and_client_names() {
    let (dir, syslog, pki) = setup("env");
    let program = script(
        &dir,
        "env.sh",
        "env | grep -E '^(PROTO|TCPREMOTE|TCPLOCAL|SSL_)' | sort",
    );
    let ca = pki.ca_pem.to_str().unwrap();
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-verify",
            "2",
            "-CAfile",
            ca,
            "-exec",
            &program,
        ],
        &syslog,
    );
    let client_pem = dir.path("client.pem");
    write_identity(&client_pem, &pki.client);
    let mut client = try_tls(inetd.port, |b| {
        b.set_certificate_file(&client_pem, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&client_pem, SslFiletype::PEM)
            .unwrap();
    })
    .unwrap();
    let local = local(&client);
    let text = String::from_utf8(read_to_close_notify(&mut client).unwrap()).unwrap();
    for expected in [
        "PROTO=TCP".to_string(),
        "TCPREMOTEIP=127.0.0.1".to_string(),
        format!("TCPREMOTEPORT={}", local.port()),
        "TCPLOCALIP=127.0.0.1".to_string(),
        format!("TCPLOCALPORT={}", inetd.port),
        "SSL_PROTOCOL=TLSv1.3".to_string(),
        "SSL_CIPHER=TLS_AES_256_GCM_SHA384".to_string(),
        "SSL_CLIENT_S_DN=/O=sslwrap tests/CN=test client".to_string(),
        "SSL_CLIENT_I_DN=/O=sslwrap tests/CN=sslwrap test CA".to_string(),
    ] {
        assert!(
            text.lines().any(|line| line == expected),
            "{expected} missing from:\n{text}"
        );
    }
}

#[test]
fn a_missing_program_is_logged_and_the_client_closed_cleanly() {
    let (dir, mut syslog, pki) = setup("missing");
    let missing = dir.path("no-such-program");
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-exec",
            missing.to_str().unwrap(),
        ],
        &syslog,
    );
    let mut client = tls(inetd.port);
    assert_eq!(
        read_to_close_notify(&mut client).unwrap(),
        b"",
        "clean close_notify"
    );
    let line = syslog.expect("cannot execute");
    assert!(
        line.contains(&format!(
            "cannot execute {}: No such file or directory",
            missing.display()
        )),
        "{line}"
    );
}

#[test]
fn program_stderr_goes_to_syslog_never_to_the_client() {
    let (dir, mut syslog, pki) = setup("stderr");
    let program = script(
        &dir,
        "noisy.sh",
        "echo 'complaint on stderr' >&2; echo 'data on stdout'",
    );
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-exec", &program],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(inetd.port)).unwrap(),
        b"data on stdout\n"
    );
    syslog.expect("noisy.sh: complaint on stderr");
}

#[test]
fn exec_in_daemon_mode_reaps_every_program() {
    let (_dir, syslog, pki) = setup("daemon-exec");
    let (mut daemon, port) = spawn_daemon(
        "127.0.0.1",
        &["-cert", pki.server_pem.to_str().unwrap()],
        &["-exec", "/bin/cat"],
        &syslog,
    );
    for n in 0..20u8 {
        let mut client = tls(port);
        client.write_all(&[n; 10]).unwrap();
        let mut echoed = [0u8; 10];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, [n; 10]);
        client.shutdown().unwrap();
        read_to_close_notify(&mut client).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        children_of(daemon.id())
            .iter()
            .filter(|(_, state)| *state == 'Z')
            .count(),
        0,
        "zombie processes left behind"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}
