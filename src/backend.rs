//! The plaintext side of a session, whichever kind the command line chose: a TCP connection to the backend (with the
//! PROXY header sent before any other byte when asked), an `-exec` program on a socketpair, or an inherited `-fd`
//! descriptor; and the address resolution that `-addr` and `-accept` share. It must never send the backend a byte
//! before the PROXY header, and never hand a program the environment of a TLS session it does not have.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::client::ClientAddresses;
use crate::exec;
use crate::options::{Backend, Config};
use crate::pass_phrase::PassSource;
use crate::proxy_header::{ProxyVersion, proxy_header};
use crate::reason::io_reason;
use crate::relay::{OutputEnd, Plaintext};
use crate::sys;
use crate::tls_facts::TlsFacts;

/// How long a backend may take to accept the TCP connection (and the PROXY header), at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// the inherited descriptor. A connection and its header take at most CONNECT_TIMEOUT, and end by `deadline`
    /// (the session's limit before TLS, with -starttls) when one is given.
    pub fn open(
        config: &Config,
        addresses: &ClientAddresses,
        tls: TlsState,
        deadline: Option<Instant>,
    ) -> Result<Backside, String> {
        match &config.backend {
            Backend::Tcp { host, port } => {
                let preamble = match config.proxy {
                    Some(version) => proxy_preamble(version, addresses, tls)?,
                    None => Vec::new(),
                };
                let own_limit = Instant::now() + CONNECT_TIMEOUT;
                let deadline = deadline.map_or(own_limit, |session| session.min(own_limit));
                connect_backend(host, *port, &preamble, deadline)
                    .map(Backside::Tcp)
                    .map_err(|reason| {
                        format!("cannot connect to backend {host} port {port}: {reason}")
                    })
            }
            Backend::Exec { program, args } => {
                let variables = exec::environment(addresses, tls.established());
                let withheld = config.tls.pass.as_ref().and_then(PassSource::variable);
                exec::start_program(program, args, &variables, withheld)
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
    fn output_end(&mut self, client_finished: bool) -> OutputEnd {
        match self {
            Backside::Program { program, .. } => program.output_end(client_finished),
            Backside::Tcp(_) | Backside::Descriptor(_) => OutputEnd::Complete,
        }
    }

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
    pub fn established(self) -> Option<&'a TlsFacts> {
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
        TlsState::Established(facts) => Some(facts.clone()),
        TlsState::RequiredLater => Some(TlsFacts::default()),
        TlsState::NotYet => None,
    };
    Ok(proxy_header(version, source, destination, facts.as_ref()))
}

/// Connects to the backend (an IPv4 or IPv6 literal, or a host name tried address by address) and sends the
/// preamble before any other byte.
/// Everything, every address tried included, ends by `deadline`.
fn connect_backend(
    host: &str,
    port: u16,
    preamble: &[u8],
    deadline: Instant,
) -> Result<TcpStream, String> {
    let mut last_error = String::from("no time left to connect");
    for address in resolve(host, port)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                let left = deadline.saturating_duration_since(Instant::now());
                stream
                    .set_write_timeout(Some(left.max(Duration::from_millis(1))))
                    .map_err(|e| e.to_string())?;
                stream
                    .write_all(preamble)
                    .map_err(|e| format!("sending the PROXY header: {e}"))?;
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(error) => last_error = io_reason(&error),
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
    let owned = sys::adopt_inherited_fd(fd).map_err(|e| io_reason(&e))?;
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(stream)
}
