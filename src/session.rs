//! One client connection from start to end, the same in inetd and daemon mode: the TLS handshake (bounded by the
//! handshake deadline) or, with -starttls, the protocol's plaintext phase and then the handshake; the plaintext side
//! (TCP backend with an optional PROXY header, -exec program or -fd descriptor); the relay; and exactly one log line
//! for any failure. A normal end is logged only with -debug.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, NameType, Ssl, SslContext, SslStream};

use crate::client::{ClientAddresses, ClientIo};
use crate::options::{Backend, Config};
use crate::plaintext_phase::{self, PhaseEnd, PhaseLimits};
use crate::proxy_header::{ProxyVersion, TlsFacts as ProxyTlsFacts, proxy_header};
use crate::relay::{self, Plaintext, RelayError, Transfer};
use crate::starttls::{AfterTls, StartTlsMode};
use crate::{exec, log_debug, log_error, log_notice, sys, tls};

/// How long a backend may take to accept the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit status of a session process: 0 for a normal end, 1 for a failure (already logged).
pub type SessionStatus = i32;

/// Serves one client to the end.
pub fn serve(config: &Config, context: &SslContext, client: ClientIo) -> SessionStatus {
    let addresses = client.addresses();
    let peer = addresses.peer_text();
    match config.starttls {
        None => serve_tls_from_the_start(config, context, client, &addresses, &peer),
        Some(mode) => serve_with_starttls(config, context, client, mode, &addresses, &peer),
    }
}

/// The classic sslwrap session: handshake first, then the plaintext side, then the relay.
fn serve_tls_from_the_start(
    config: &Config,
    context: &SslContext,
    client: ClientIo,
    addresses: &ClientAddresses,
    peer: &str,
) -> SessionStatus {
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
    let mut backend = match Backside::open(config, addresses, TlsState::Established(&facts)) {
        Ok(backend) => backend,
        Err(reason) => {
            log_error!("{peer}: {reason}");
            close_cleanly(&mut stream);
            return 1;
        }
    };
    let outcome = relay::relay_until_closed(&mut stream, &mut backend, None, config.idle_timeout);
    backend.finish();
    report_end(peer, outcome)
}

/// `-starttls`: the backend first (its greeting), the protocol's plaintext phase, then TLS on the same connection.
fn serve_with_starttls(
    config: &Config,
    context: &SslContext,
    mut client: ClientIo,
    mode: StartTlsMode,
    addresses: &ClientAddresses,
    peer: &str,
) -> SessionStatus {
    let tls = if mode.required {
        TlsState::RequiredLater
    } else {
        TlsState::NotYet
    };
    let mut backend = match Backside::open(config, addresses, tls) {
        Ok(backend) => backend,
        Err(reason) => {
            log_error!("{peer}: {reason}");
            return 1;
        }
    };
    let limits = PhaseLimits {
        greeting: config.handshake_timeout,
        idle: config.idle_timeout,
    };
    let outcome = match plaintext_phase::run(&mut client, &mut backend, mode, peer, &limits) {
        PhaseEnd::Closed { failed } => {
            backend.finish();
            return i32::from(failed);
        }
        PhaseEnd::PlainRelay => {
            relay::relay_until_closed(&mut client, &mut backend, None, config.idle_timeout)
        }
        PhaseEnd::BeginTls { backend_pending } => {
            match upgrade(config, context, client, mode, &backend_pending, peer) {
                Ok((mut stream, mut filter)) => relay::relay_until_closed(
                    &mut stream,
                    &mut backend,
                    Some(&mut filter),
                    config.idle_timeout,
                ),
                Err(reason) => {
                    log_error!("{reason}");
                    backend.finish();
                    return 1;
                }
            }
        }
    };
    backend.finish();
    report_end(peer, outcome)
}

/// The switch: the handshake on the raw connection (never a fallback to plaintext once STARTTLS was accepted), then
/// the backend bytes held back during the switch, filtered, inside TLS.
fn upgrade(
    config: &Config,
    context: &SslContext,
    client: ClientIo,
    mode: StartTlsMode,
    backend_pending: &[u8],
    peer: &str,
) -> Result<(SslStream<ClientIo>, AfterTls), String> {
    let deadline = Instant::now() + config.handshake_timeout;
    let mut stream = accept_tls(context, client, deadline, config.handshake_timeout)
        .map_err(|reason| format!("TLS handshake with {peer} after STARTTLS failed: {reason}"))?;
    let facts = TlsFacts::of(&stream);
    log_debug!(
        "{peer}: STARTTLS done, {} {} established",
        facts.protocol,
        facts.cipher
    );
    let mut filter = AfterTls::new(mode.proto);
    let mut pending = Vec::new();
    filter.backend_to_client(backend_pending, &mut pending);
    plaintext_phase::write_all_within(&mut stream, &pending, deadline)
        .map_err(|reason| format!("{peer}: {reason}"))?;
    Ok((stream, filter))
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
        Err(error @ RelayError::ClientGone(_)) => {
            log_notice!("{peer}: session ended: {error}");
            1
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

/// The plaintext side of a session, whichever kind the command line chose.
pub enum Backside {
    Tcp(TcpStream),
    Program {
        stream: UnixStream,
        program: exec::Program,
    },
    Descriptor(UnixStream),
}

impl Backside {
    /// Opens the plaintext side: connects (sending the PROXY header first when asked), starts the program, or takes
    /// the inherited descriptor.
    pub fn open(
        config: &Config,
        addresses: &ClientAddresses,
        tls: TlsState,
    ) -> Result<Backside, String> {
        match &config.backend {
            Backend::Tcp { host, port } => {
                let preamble = match config.proxy {
                    Some(version) => proxy_preamble(version, addresses, tls)?,
                    None => Vec::new(),
                };
                connect_backend(host, *port, &preamble)
                    .map(Backside::Tcp)
                    .map_err(|reason| {
                        format!("cannot connect to backend {host} port {port}: {reason}")
                    })
            }
            Backend::Exec { program, args } => {
                let variables = exec::environment(addresses, tls.established());
                exec::start_program(program, args, &variables)
                    .map(|(program, stream)| Backside::Program { stream, program })
                    .map_err(|reason| format!("cannot execute {}: {reason}", program.display()))
            }
            Backend::Fd(fd) => plaintext_descriptor(*fd)
                .map(Backside::Descriptor)
                .map_err(|reason| format!("-fd {fd}: {reason}")),
        }
    }

    /// Closes the plaintext side; a program is given a moment to exit and is reaped.
    pub fn finish(self) {
        if let Backside::Program { stream, program } = self {
            drop(stream);
            program.finish();
        }
    }

    fn stream(&mut self) -> &mut dyn StreamLike {
        match self {
            Backside::Tcp(stream) => stream,
            Backside::Program { stream, .. } | Backside::Descriptor(stream) => stream,
        }
    }
}

/// What the relay needs of a plaintext stream, object-safe so `Backside` can delegate.
trait StreamLike: Read + Write + AsRawFd + Plaintext {}
impl<T: Read + Write + AsRawFd + Plaintext> StreamLike for T {}

impl Read for Backside {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.stream().read(buffer)
    }
}

impl Write for Backside {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.stream().write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Backside {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Backside::Tcp(stream) => stream.as_raw_fd(),
            Backside::Program { stream, .. } | Backside::Descriptor(stream) => stream.as_raw_fd(),
        }
    }
}

impl Plaintext for Backside {
    fn shutdown_write(&self) -> std::io::Result<()> {
        match self {
            Backside::Tcp(stream) => stream.shutdown_write(),
            Backside::Program { stream, .. } | Backside::Descriptor(stream) => {
                stream.shutdown_write()
            }
        }
    }
}

/// What is known about TLS when the plaintext side is opened.
#[derive(Clone, Copy)]
pub enum TlsState<'a> {
    /// The handshake is done (classic sessions).
    Established(&'a TlsFacts),
    /// `-starttls` in required mode: no login can reach the backend before TLS, because sslwrap refuses every one,
    /// so the backend may treat the session as TLS from the start; version and cipher are not known yet.
    RequiredLater,
    /// `-starttls` in optional mode: the client may never use TLS.
    NotYet,
}

impl<'a> TlsState<'a> {
    fn established(self) -> Option<&'a TlsFacts> {
        match self {
            TlsState::Established(facts) => Some(facts),
            TlsState::RequiredLater | TlsState::NotYet => None,
        }
    }
}

/// The PROXY protocol header for this client: with the TLS facts when the handshake is done, with the bare TLS flag
/// when TLS is required later (so a backend like Dovecot accepts the logins that can only come after STARTTLS).
fn proxy_preamble(
    version: ProxyVersion,
    addresses: &ClientAddresses,
    tls: TlsState,
) -> Result<Vec<u8>, String> {
    let (Some(source), Some(destination)) = (addresses.peer, addresses.local) else {
        return Err("cannot send a PROXY header: the client is not on a TCP socket".to_string());
    };
    let facts = match tls {
        TlsState::Established(facts) => Some(facts.for_proxy_header()),
        TlsState::RequiredLater => Some(ProxyTlsFacts::default()),
        TlsState::NotYet => None,
    };
    Ok(proxy_header(version, source, destination, facts.as_ref()))
}

/// Connects to the backend (an IPv4 or IPv6 literal, or a host name tried address by address) and sends the
/// preamble before any other byte.
fn connect_backend(host: &str, port: u16, preamble: &[u8]) -> Result<TcpStream, String> {
    let mut last_error = String::new();
    for address in resolve(host, port)? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                stream
                    .set_write_timeout(Some(CONNECT_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                stream
                    .write_all(preamble)
                    .map_err(|e| format!("sending the PROXY header: {e}"))?;
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(error) => last_error = tls::plain_io_reason(&error),
        }
    }
    Err(last_error)
}

/// An IPv4 or IPv6 literal as it is, or every address a host name resolves to (never an empty list).
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("no address found for {host}"));
    }
    Ok(addresses)
}

/// The `-fd N` plaintext side: an inherited socket (usually a socketpair end given by a helper like makesock).
fn plaintext_descriptor(fd: i32) -> Result<UnixStream, String> {
    let owned = sys::adopt_inherited_fd(fd).map_err(|e| tls::plain_io_reason(&e))?;
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// What the handshake settled, for logs and the -exec environment.
pub struct TlsFacts {
    pub protocol: String,
    pub cipher: String,
    pub client_cert_presented: bool,
    pub client_subject: Option<String>,
    pub client_issuer: Option<String>,
    pub client_common_name: Option<String>,
    pub server_name: Option<String>,
}

impl TlsFacts {
    pub fn of(stream: &SslStream<ClientIo>) -> TlsFacts {
        let ssl = stream.ssl();
        let presented = ssl.peer_certificate();
        let verified = ssl.verify_result() == openssl::x509::X509VerifyResult::OK;
        let certificate = presented.as_ref().filter(|_| verified);
        TlsFacts {
            protocol: ssl.version_str().to_string(),
            cipher: ssl
                .current_cipher()
                .map_or_else(String::new, |cipher| cipher.name().to_string()),
            client_cert_presented: presented.is_some(),
            client_subject: certificate.map(|c| distinguished_name(c.subject_name())),
            client_issuer: certificate.map(|c| distinguished_name(c.issuer_name())),
            client_common_name: certificate.and_then(|c| common_name(c.subject_name())),
            server_name: ssl.servername(NameType::HOST_NAME).map(str::to_string),
        }
    }

    /// The facts in the shape of the PROXY v2 TLS TLVs.
    fn for_proxy_header(&self) -> ProxyTlsFacts {
        ProxyTlsFacts {
            version: self.protocol.clone(),
            cipher: self.cipher.clone(),
            client_cert_presented: self.client_cert_presented,
            client_cert_verified: self.client_subject.is_some(),
            client_cn: self.client_common_name.clone(),
            sni: self.server_name.clone(),
            ..ProxyTlsFacts::default()
        }
    }
}

fn common_name(name: &openssl::x509::X509NameRef) -> Option<String> {
    let entry = name.entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
    entry.data().to_string().ok()
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
