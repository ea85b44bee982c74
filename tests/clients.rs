//! Independent TLS clients against inetd mode: the `openssl s_client` program, Python's `ssl` module, GnuTLS's
//! `gnutls-cli` and curl, each talking through sslwrap to a real plaintext backend. A server that only works with
//! the `openssl` crate's client would not be a drop-in replacement.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn inetd_echo(name: &str) -> (TempDir, Syslog, Inetd) {
    let dir = TempDir::new(name);
    let syslog = Syslog::new(&dir);
    let pki = Pki::new(&dir);
    let port = backend(echo).to_string();
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-port", &port],
        &syslog,
    );
    (dir, syslog, inetd)
}

/// Runs a client program with `input` on stdin and returns its stdout, bounded in time.
fn run_client(program: &str, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Closing stdin only after the echo had time to come back: s_client ends the session at stdin EOF.
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    wait_with_timeout(&mut child, Duration::from_secs(20)).expect("client hung");
    reader.join().unwrap()
}

#[test]
fn openssl_s_client_round_trip() {
    let (_dir, _syslog, inetd) = inetd_echo("s_client");
    let address = format!("127.0.0.1:{}", inetd.port);
    let output = run_client(
        "openssl",
        &["s_client", "-connect", &address, "-quiet", "-no_ign_eof"],
        b"through s_client\n",
    );
    assert!(output.contains("through s_client"), "{output:?}");
}

#[test]
fn python_ssl_round_trip() {
    let (_dir, _syslog, inetd) = inetd_echo("python");
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         with ctx.wrap_socket(socket.create_connection(('127.0.0.1', {}), timeout=20)) as s:\n\
         \x20   s.sendall(b'python says hi'); data = b''\n\
         \x20   while len(data) < 14: data += s.recv(100)\n\
         \x20   print(s.version(), data.decode())\n",
        inetd.port
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("TLSv1.3 python says hi"),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn gnutls_cli_round_trip() {
    let (_dir, _syslog, inetd) = inetd_echo("gnutls");
    let port = inetd.port.to_string();
    let output = run_client(
        "gnutls-cli",
        &["--insecure", "--port", &port, "127.0.0.1"],
        b"through gnutls\n",
    );
    assert!(output.contains("through gnutls"), "{output:?}");
}

#[test]
fn curl_fetches_through_sslwrap() {
    fn http(mut stream: TcpStream) {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let body = "hello from the backend\n";
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    let dir = TempDir::new("curl");
    let syslog = Syslog::new(&dir);
    let pki = Pki::new(&dir);
    let port = backend(http).to_string();
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-port", &port],
        &syslog,
    );
    let url = format!("https://localhost:{}/", inetd.port);
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            pki.ca_pem.to_str().unwrap(),
            "--resolve",
        ])
        .arg(format!("localhost:{}:127.0.0.1", inetd.port))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from the backend\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
