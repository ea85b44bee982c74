//! Session resumption with `-ticketkey`, seen by `openssl s_client`: across inetd-mode processes (each connection
//! its own sslwrap, as inetd runs it), across two daemons sharing the key file, across a key rotation by SIGHUP and a
//! restart (a reload with a bad key file keeps the previous keys); without the option, inetd mode sends no ticket at
//! all. A resumed session's PROXY v2 header says its client certificate was shown on an earlier connection. A ticket
//! is opened by hand with the key parts at nginx's offsets. Key files are made as nginx documents it,
//! `openssl rand 80 > file`; a file of another size is a start-up error naming it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The backend: a greeting, then the end of the connection, so that each s_client run ends by itself once it has
/// read everything the server sent, tickets included.
fn greet_and_close(mut stream: TcpStream) {
    let _ = stream.write_all(b"hello from the backend\n");
}

/// `openssl rand BYTES > file`, mode 600.
fn random_key_file(path: &Path, bytes: usize) {
    let file = std::fs::File::create(path).unwrap();
    let status = Command::new("openssl")
        .args(["rand", &bytes.to_string()])
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What one `openssl s_client -msg` connection showed.
struct Connection {
    output: String,
}

impl Connection {
    fn reused(&self) -> bool {
        self.output.lines().any(|line| line.starts_with("Reused, "))
    }

    fn new_session(&self) -> bool {
        self.output.lines().any(|line| line.starts_with("New, "))
    }

    /// The last session ticket s_client printed, read back from its hex dump, whose rows are an offset, 16 bytes
    /// in a column 47 characters wide and their text: `    0000 - 16 3b 30 9e 60 68 1a f1-cf 1d ed 33 16 ae 83 2f   .;0.`.
    fn last_ticket(&self) -> Option<Vec<u8>> {
        let mut lines = self.output.lines().peekable();
        let mut ticket = None;
        while let Some(line) = lines.next() {
            if line.trim() != "TLS session ticket:" {
                continue;
            }
            let mut bytes = Vec::new();
            while let Some(row) = lines.peek().and_then(|row| row.trim().split_once(" - ")) {
                let column: String = row.1.chars().take(47).collect();
                for byte in column.replace('-', " ").split_whitespace() {
                    bytes.push(u8::from_str_radix(byte, 16).ok()?);
                }
                lines.next();
            }
            ticket = Some(bytes);
        }
        ticket
    }

    /// The key name of the last ticket: its first 16 bytes.
    fn last_ticket_key_name(&self) -> Option<Vec<u8>> {
        self.last_ticket().map(|ticket| ticket[..16].to_vec())
    }

    /// NewSessionTicket messages received from the server (`<<<` lines of -msg).
    fn tickets_received(&self) -> usize {
        self.output
            .lines()
            .filter(|line| line.starts_with("<<<") && line.ends_with("NewSessionTicket"))
            .count()
    }
}

/// One s_client connection to `host:port` with `version` (-tls1_2 or -tls1_3), offering the session saved in
/// `session_in` if given and saving its own in `session_out`; it reads until the server closes.
fn connect(
    dir: &TempDir,
    host: &str,
    port: u16,
    version: &str,
    session_in: Option<&Path>,
    session_out: &Path,
) -> Connection {
    let output_path = dir.path("s_client.out");
    let output = std::fs::File::create(&output_path).unwrap();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", version, "-msg", "-ign_eof", "-connect"])
        .arg(format!("{host}:{port}"))
        .arg("-sess_out")
        .arg(session_out);
    if let Some(session) = session_in {
        command.arg("-sess_in").arg(session);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    let output = std::fs::read_to_string(&output_path).unwrap();
    assert!(status.is_some(), "s_client did not end: {output}");
    assert!(
        output.contains("hello from the backend"),
        "no greeting came through: {output}"
    );
    Connection { output }
}

/// Two connections, the second offering the first's session: (first, second).
fn connect_twice(dir: &TempDir, host: &str, port: u16, version: &str) -> (Connection, Connection) {
    let session = dir.path(&format!("session{version}"));
    let first = connect(dir, host, port, version, None, &session);
    let second = connect(
        dir,
        host,
        port,
        version,
        Some(&session),
        &dir.path("unused"),
    );
    (first, second)
}

fn path_text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn inetd_mode_processes_resume_each_others_sessions_with_a_shared_key() {
    let s = setup("tickets-inetd");
    let key = s.dir.path("ticket.key");
    random_key_file(&key, 80);
    let line = s.legacy_line(backend(greet_and_close), &["-ticketkey", path_text(&key)]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    for version in ["-tls1_3", "-tls1_2"] {
        let (first, second) = connect_twice(&s.dir, "127.0.0.1", inetd.port, version);
        assert!(first.new_session(), "{version}: {}", first.output);
        assert!(first.tickets_received() > 0, "{version}: {}", first.output);
        assert!(second.reused(), "{version}: {}", second.output);
    }
}

#[test]
fn inetd_mode_without_a_key_sends_no_ticket() {
    let s = setup("tickets-none");
    let line = s.legacy_line(backend(greet_and_close), &[]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    for version in ["-tls1_3", "-tls1_2"] {
        let session = s.dir.path("session");
        let first = connect(&s.dir, "127.0.0.1", inetd.port, version, None, &session);
        assert!(first.new_session(), "{version}: {}", first.output);
        assert_eq!(first.tickets_received(), 0, "{version}: {}", first.output);
        // A TLS 1.2 client keeps a session even without a ticket; offering it gets a full handshake.
        if session.exists() {
            let second = connect(
                &s.dir,
                "127.0.0.1",
                inetd.port,
                version,
                Some(&session),
                &s.dir.path("unused"),
            );
            assert!(second.new_session(), "{version}: {}", second.output);
        }
    }
}

#[test]
fn two_daemons_sharing_the_key_file_resume_each_others_sessions() {
    let s = setup("tickets-two");
    let key = s.dir.path("ticket.key");
    random_key_file(&key, 80);
    let line = s.legacy_line(backend(greet_and_close), &["-ticketkey", path_text(&key)]);
    let first_host = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    let _first_host = KilledOnDrop(first_host.child);
    let second_host = spawn_daemon("127.0.0.2", &as_strs(&line), &[], &s.syslog);
    let _second_host = KilledOnDrop(second_host.child);
    for version in ["-tls1_3", "-tls1_2"] {
        let session = s.dir.path(&format!("session{version}"));
        let on_first = connect(
            &s.dir,
            "127.0.0.1",
            first_host.port,
            version,
            None,
            &session,
        );
        assert!(on_first.new_session(), "{version}: {}", on_first.output);
        let on_second = connect(
            &s.dir,
            "127.0.0.2",
            second_host.port,
            version,
            Some(&session),
            &s.dir.path("unused"),
        );
        assert!(on_second.reused(), "{version}: {}", on_second.output);
    }
}

/// A session made where no client certificate is asked for must not resume, with the same keys, where one is: a
/// resumed client shows no certificate, so it would pass the second daemon's verification unchecked.
#[test]
fn a_session_does_not_resume_under_other_client_verification_settings() {
    let s = setup("tickets-verify");
    let key = s.dir.path("ticket.key");
    random_key_file(&key, 80);
    let open = s.legacy_line(backend(greet_and_close), &["-ticketkey", path_text(&key)]);
    let verifying = s.legacy_line(
        backend(greet_and_close),
        &[
            "-ticketkey",
            path_text(&key),
            "-verify",
            "1",
            "-CAfile",
            path_text(&s.pki.ca_pem),
        ],
    );
    let open_host = spawn_daemon("127.0.0.1", &as_strs(&open), &[], &s.syslog);
    let _open_host = KilledOnDrop(open_host.child);
    let verifying_host = spawn_daemon("127.0.0.2", &as_strs(&verifying), &[], &s.syslog);
    let _verifying_host = KilledOnDrop(verifying_host.child);
    for version in ["-tls1_3", "-tls1_2"] {
        let session = s.dir.path(&format!("session{version}"));
        let first = connect(&s.dir, "127.0.0.1", open_host.port, version, None, &session);
        assert!(first.new_session(), "{version}: {}", first.output);
        let elsewhere = connect(
            &s.dir,
            "127.0.0.2",
            verifying_host.port,
            version,
            Some(&session),
            &s.dir.path("unused"),
        );
        assert!(
            elsewhere.new_session(),
            "{version}: resumed under -verify: {}",
            elsewhere.output
        );
    }
}

/// A 48-byte key (AES-128) as the previous key beside an 80-byte one: nginx's two layouts both work.
#[test]
fn after_a_rotation_by_sighup_old_tickets_resume_and_get_a_ticket_under_the_new_key() {
    let mut s = setup("tickets-rotate");
    let (current, previous) = (s.dir.path("current.key"), s.dir.path("previous.key"));
    random_key_file(&current, 48);
    random_key_file(&previous, 80);
    let line = s.legacy_line(
        backend(greet_and_close),
        &[
            "-ticketkey",
            path_text(&current),
            "-ticketkey",
            path_text(&previous),
        ],
    );
    let daemon = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    let pid = daemon.child.id();
    let daemon_child = KilledOnDrop(daemon.child);
    let versions = ["-tls1_3", "-tls1_2"];
    let sealed_before: Vec<PathBuf> = versions
        .iter()
        .map(|version| {
            let session = s.dir.path(&format!("before{version}"));
            connect(&s.dir, "127.0.0.1", daemon.port, version, None, &session);
            session
        })
        .collect();
    // What a cron job does: the current key becomes the previous one, a new one is made, the daemon reloads.
    std::fs::rename(&current, &previous).unwrap();
    random_key_file(&current, 80);
    send_signal(pid, "HUP");
    s.syslog.expect("certificate, key and CA files reloaded");
    let new_key_name = std::fs::read(&current).unwrap()[..16].to_vec();
    for (version, session) in versions.iter().zip(&sealed_before) {
        let renewed = s.dir.path(&format!("renewed{version}"));
        let resumed = connect(
            &s.dir,
            "127.0.0.1",
            daemon.port,
            version,
            Some(session),
            &renewed,
        );
        assert!(resumed.reused(), "{version}: {}", resumed.output);
        assert!(
            resumed.tickets_received() > 0,
            "{version}: {}",
            resumed.output
        );
        assert_eq!(
            resumed.last_ticket_key_name().as_ref(),
            Some(&new_key_name),
            "{version}: {}",
            resumed.output
        );
    }
    // A restart with the new key alone resumes the renewed TLS 1.3 session (s_client saves a session only from a
    // TLS 1.2 handshake that was not a resumption).
    drop(daemon_child);
    let line = s.legacy_line(
        backend(greet_and_close),
        &["-ticketkey", path_text(&current)],
    );
    let restarted = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    let _restarted = KilledOnDrop(restarted.child);
    let resumed = connect(
        &s.dir,
        "127.0.0.1",
        restarted.port,
        "-tls1_3",
        Some(&s.dir.path("renewed-tls1_3")),
        &s.dir.path("unused"),
    );
    assert!(resumed.reused(), "{}", resumed.output);
}

#[test]
fn a_key_file_of_the_wrong_size_is_a_start_up_error_naming_it() {
    let mut s = setup("tickets-size");
    let key = s.dir.path("short.key");
    random_key_file(&key, 47);
    let line = s.legacy_line(1, &["-ticketkey", path_text(&key)]);
    let (status, stderr) = run_to_end(&as_strs(&line), &s.syslog);
    assert_eq!(status.code(), Some(1));
    let message = format!("-ticketkey: {} is 47 bytes long", key.display());
    assert!(stderr.contains(&message), "{stderr}");
    s.syslog.expect(&message);
}

#[test]
fn a_key_file_readable_by_others_is_used_with_a_warning_naming_it() {
    let mut s = setup("tickets-mode");
    let key = s.dir.path("open.key");
    random_key_file(&key, 80);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = s.legacy_line(backend(greet_and_close), &["-ticketkey", path_text(&key)]);
    let daemon = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    let _daemon = KilledOnDrop(daemon.child);
    s.syslog.expect(&format!(
        "-ticketkey: session ticket key file {} is readable by group or others",
        key.display()
    ));
    let (_, second) = connect_twice(&s.dir, "127.0.0.1", daemon.port, "-tls1_3");
    assert!(second.reused(), "{}", second.output);
}

/// A backend that reads the PROXY v2 header and sends it back, so the TLS client sees what the backend was told.
fn echo_the_v2_header(mut stream: TcpStream) {
    let mut fixed = [0u8; 16];
    if stream.read_exact(&mut fixed).is_err() {
        return;
    }
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    if stream.read_exact(&mut rest).is_ok() {
        let _ = stream.write_all(&[&fixed[..], &rest].concat());
    }
}

/// Python's ssl client with a client certificate connects twice per protocol version, the second time offering the
/// first session, and prints the client flags of the PP2_TYPE_SSL entry (IPv4: 12 address bytes before the TLVs) the
/// backend echoed, with its verification result.
const PROXY_FLAGS_CLIENT: &str = "
import socket, ssl, sys
port, identity = int(sys.argv[1]), sys.argv[2]
for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    ctx.load_cert_chain(identity)
    session = None
    for attempt in ('first', 'second'):
        with ctx.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), session=session) as s:
            header = b''
            while len(header) < 16 or len(header) < 16 + int.from_bytes(header[14:16], 'big'):
                chunk = s.recv(4096)
                if not chunk:
                    break
                header += chunk
            tlvs = header[16 + 12:]
            while tlvs and tlvs[0] != 0x20:
                tlvs = tlvs[3 + int.from_bytes(tlvs[1:3], 'big'):]
            print(s.version(), 'reused' if s.session_reused else 'new', '%02x' % tlvs[3],
                  'verified' if tlvs[4:8] == bytes(4) else 'unverified')
            session = s.session
";

#[test]
fn a_resumed_session_tells_the_backend_its_certificate_came_with_the_session_not_the_connection() {
    let s = setup("tickets-proxy");
    let key = s.dir.path("ticket.key");
    random_key_file(&key, 80);
    let identity = s.dir.path("client.pem");
    write_identity(&identity, &s.pki.client);
    let line = s.legacy_line(
        backend(echo_the_v2_header),
        &[
            "-ticketkey",
            path_text(&key),
            "-Verify",
            "1",
            "-CAfile",
            path_text(&s.pki.ca_pem),
            "-proxy",
            "v2",
        ],
    );
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let output = s.dir.path("python.out");
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PROXY_FLAGS_CLIENT, &inetd.port.to_string()])
        .arg(&identity)
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut python, Duration::from_secs(60));
    let mut errors = String::new();
    python
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert!(status.is_some_and(|status| status.success()), "{errors}");
    // 0x07: TLS, certificate on this connection, certificate in this session; 0x05: TLS, certificate in the session.
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "TLSv1.3 new 07 verified\nTLSv1.3 reused 05 verified\n\
         TLSv1.2 new 07 verified\nTLSv1.2 reused 05 verified\n",
        "{errors}"
    );
}

/// What nginx makes of its key files, checked on the ticket itself (OpenSSL's layout: key name, IV, the sealed
/// session, HMAC-SHA256 of all that): the name is the file's first 16 bytes; a 48-byte file has the AES-128 key at
/// bytes 16-31 and the HMAC secret at 32-47, an 80-byte file the HMAC secret at 16-47 and the AES-256 key at 48-79.
#[test]
fn tickets_are_sealed_with_the_key_parts_where_nginx_reads_them() {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    use openssl::symm::{Cipher, decrypt};
    let s = setup("tickets-layout");
    for length in [48, 80] {
        let key_path = s.dir.path(&format!("{length}.key"));
        random_key_file(&key_path, length);
        let key = std::fs::read(&key_path).unwrap();
        let (cipher, aes_key, hmac_secret) = if length == 48 {
            (Cipher::aes_128_cbc(), &key[16..32], &key[32..48])
        } else {
            (Cipher::aes_256_cbc(), &key[48..80], &key[16..48])
        };
        let line = s.legacy_line(
            backend(greet_and_close),
            &["-ticketkey", path_text(&key_path)],
        );
        let inetd = Inetd::start(&as_strs(&line), &s.syslog);
        let connection = connect(
            &s.dir,
            "127.0.0.1",
            inetd.port,
            "-tls1_2",
            None,
            &s.dir.path("session"),
        );
        let ticket = connection.last_ticket().expect("no ticket printed");
        assert_eq!(&ticket[..16], &key[..16], "{length}: {}", connection.output);
        let (authenticated, mac) = ticket.split_at(ticket.len() - 32);
        let hmac_key = PKey::hmac(hmac_secret).unwrap();
        let expected_mac = Signer::new(MessageDigest::sha256(), &hmac_key)
            .unwrap()
            .sign_oneshot_to_vec(authenticated)
            .unwrap();
        assert_eq!(mac, expected_mac, "{length}: HMAC");
        let (iv, sealed) = authenticated[16..].split_at(16);
        let session = decrypt(cipher, aes_key, Some(iv), sealed).expect("AES key");
        openssl::ssl::SslSession::from_der(&session).expect("a session inside");
    }
}

#[test]
fn a_reload_with_a_key_file_of_the_wrong_size_fails_and_keeps_the_previous_keys() {
    let mut s = setup("tickets-bad-reload");
    let key = s.dir.path("ticket.key");
    random_key_file(&key, 80);
    let line = s.legacy_line(backend(greet_and_close), &["-ticketkey", path_text(&key)]);
    let daemon = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    let pid = daemon.child.id();
    let _daemon = KilledOnDrop(daemon.child);
    let session = s.dir.path("session");
    connect(&s.dir, "127.0.0.1", daemon.port, "-tls1_3", None, &session);
    random_key_file(&key, 47);
    send_signal(pid, "HUP");
    s.syslog.expect(&format!(
        "reload failed, keeping the previous certificate: -ticketkey: {} is 47 bytes long",
        key.display()
    ));
    let resumed = connect(
        &s.dir,
        "127.0.0.1",
        daemon.port,
        "-tls1_3",
        Some(&session),
        &s.dir.path("unused"),
    );
    assert!(resumed.reused(), "{}", resumed.output);
}
