//! Independent TLS clients against inetd mode: the `openssl s_client` program, Python's `ssl` module, GnuTLS's
//! `gnutls-cli` and curl, each talking through sslwrap to a real plaintext backend. A server that only works with
//! the `openssl` crate's client would not be a drop-in replacement.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;
use support::converse;

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

#[test]
fn openssl_s_client_round_trip() {
    let (_dir, _syslog, inetd) = inetd_echo("s_client");
    let address = format!("127.0.0.1:{}", inetd.port);
    // s_client ends the session at stdin EOF: stdin stays open until the echo is back.
    let ran = converse(
        "openssl",
        &["s_client", "-connect", &address, "-quiet", "-no_ign_eof"],
        b"through s_client\n",
        "through s_client",
    );
    assert!(ran.stdout.contains("through s_client"), "{ran:?}");
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
    let ran = converse(
        "gnutls-cli",
        &["--insecure", "--port", &port, "127.0.0.1"],
        b"through gnutls\n",
        "through gnutls",
    );
    assert!(
        ran.stdout.lines().any(|line| line == "through gnutls"),
        "{ran:?}"
    );
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
