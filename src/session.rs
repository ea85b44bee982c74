//! One client connection from start to end, the same in inetd and daemon mode: the TLS handshake (bounded by the
//! handshake deadline), the plaintext side (TCP backend, -exec program or -fd descriptor), the relay, and exactly one
//! log line for any failure. A normal end is logged only with -debug.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, Ssl, SslContext, SslStream};

use crate::client::ClientIo;
use crate::options::{Backend, Config};
use crate::relay::{self, RelayError, Transfer};
use crate::{exec, log_debug, log_error, sys, tls};

/// How long a backend may take to accept the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit status of a session process: 0 for a normal end, 1 for a failure (already logged).
pub type SessionStatus = i32;

/// Serves one client to the end.
pub fn serve(config: &Config, context: &SslContext, client: ClientIo) -> SessionStatus {
    let addresses = client.addresses();
    let peer = addresses.peer_text();
    let deadline = Instant::now() + config.handshake_timeout;
    let mut stream = match accept_tls(context, client, deadline, config.handshake_timeout) {
        Ok(stream) => stream,
        Err(reason) => {
            log_error!("TLS handshake with {peer} failed: {reason}");
            return 1;
        }
    };
    let facts = TlsFacts::of(&stream);
    log_debug!("{peer}: {} {} established", facts.protocol, facts.cipher);
    let outcome = match &config.backend {
        Backend::Tcp { host, port } => match connect_backend(host, *port) {
            Ok(mut backend) => {
                relay::relay_until_closed(&mut stream, &mut backend, None, config.idle_timeout)
            }
            Err(reason) => {
                log_error!("{peer}: cannot connect to backend {host} port {port}: {reason}");
                close_cleanly(&mut stream);
                return 1;
            }
        },
        Backend::Exec { program, args } => exec::serve_with_program(
            &mut stream,
            program,
            args,
            &addresses,
            &facts,
            config.idle_timeout,
        ),
        Backend::Fd(fd) => match plaintext_descriptor(*fd) {
            Ok(mut plain) => {
                relay::relay_until_closed(&mut stream, &mut plain, None, config.idle_timeout)
            }
            Err(reason) => {
                log_error!("{peer}: -fd {fd}: {reason}");
                close_cleanly(&mut stream);
                return 1;
            }
        },
    };
    report_end(&peer, outcome)
}

/// Logs how the relay ended and turns it into the exit status.
pub fn report_end(peer: &str, outcome: Result<Transfer, RelayError>) -> SessionStatus {
    match outcome {
        Ok(transfer) => {
            log_debug!(
                "{peer}: closed, {} bytes from client, {} bytes to client",
                transfer.from_client,
                transfer.to_client
            );
            0
        }
        Err(error) => {
            log_error!("{peer}: session ended: {error}");
            1
        }
    }
}

/// Sends close_notify so the client sees an orderly end, then gives up quietly (the client may be gone).
pub fn close_cleanly(stream: &mut SslStream<ClientIo>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match stream.shutdown() {
            Ok(_) => return,
            Err(error) if error.code() == ErrorCode::WANT_WRITE => {
                if !relay::wait_until(stream.get_ref().write_fd(), sys::POLLOUT, deadline)
                    .unwrap_or(false)
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Runs the server side of the handshake on a non-blocking client, waiting with poll until the deadline.
pub fn accept_tls(
    context: &SslContext,
    client: ClientIo,
    deadline: Instant,
    limit: Duration,
) -> Result<SslStream<ClientIo>, String> {
    let ssl = Ssl::new(context).map_err(|e| tls::openssl_reason(&e))?;
    let mut stream = SslStream::new(ssl, client).map_err(|e| tls::openssl_reason(&e))?;
    loop {
        let error = match stream.accept() {
            Ok(()) => return Ok(stream),
            Err(error) => error,
        };
        let (fd, events) = match error.code() {
            ErrorCode::WANT_READ => (stream.get_ref().read_fd(), sys::POLLIN),
            ErrorCode::WANT_WRITE => (stream.get_ref().write_fd(), sys::POLLOUT),
            _ => return Err(handshake_failure_reason(&stream, &error)),
        };
        match relay::wait_until(fd, events, deadline) {
            Ok(true) => {}
            Ok(false) => return Err(format!("not completed within {} s", limit.as_secs())),
            Err(e) => return Err(format!("poll failed: {e}")),
        }
    }
}

fn handshake_failure_reason(stream: &SslStream<ClientIo>, error: &openssl::ssl::Error) -> String {
    if error.code() == ErrorCode::SYSCALL
        && error.io_error().is_none()
        && error.ssl_error().is_none()
    {
        return "client closed the connection during the handshake".to_string();
    }
    let reason = relay::tls_error_reason(error);
    let verify = stream.ssl().verify_result();
    if verify != openssl::x509::X509VerifyResult::OK {
        return format!("{reason} (client certificate: {})", verify.error_string());
    }
    reason
}

/// Connects to the backend: an IPv4 or IPv6 literal, or a host name tried address by address.
pub fn connect_backend(host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let mut last_error = format!("no address found for {host}");
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(error) => last_error = tls::plain_io_reason(&error),
        }
    }
    Err(last_error)
}

/// The `-fd N` plaintext side: an inherited socket (usually a socketpair end from a helper like makesock).
fn plaintext_descriptor(fd: i32) -> Result<UnixStream, String> {
    if !sys::is_open(fd) {
        return Err("descriptor is not open".to_string());
    }
    let owned = sys::take_inherited_fd(fd).map_err(|e| e.to_string())?;
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// What the handshake settled, for logs and the -exec environment.
pub struct TlsFacts {
    pub protocol: String,
    pub cipher: String,
    pub client_subject: Option<String>,
    pub client_issuer: Option<String>,
}

impl TlsFacts {
    pub fn of(stream: &SslStream<ClientIo>) -> TlsFacts {
        let ssl = stream.ssl();
        let verified = ssl.verify_result() == openssl::x509::X509VerifyResult::OK;
        let certificate = ssl.peer_certificate().filter(|_| verified);
        TlsFacts {
            protocol: ssl.version_str().to_string(),
            cipher: ssl
                .current_cipher()
                .map_or_else(String::new, |cipher| cipher.name().to_string()),
            client_subject: certificate
                .as_ref()
                .map(|c| distinguished_name(c.subject_name())),
            client_issuer: certificate
                .as_ref()
                .map(|c| distinguished_name(c.issuer_name())),
        }
    }
}

/// A name in the classic one-line form `/C=US/O=Example/CN=client`, as ucspi-ssl and mod_ssl users know it.
fn distinguished_name(name: &openssl::x509::X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_default();
            format!("/{key}={value}")
        })
        .collect()
}
