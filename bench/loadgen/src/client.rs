//! Client connections to the wrapper under test. TLS is configured so every wrapper does the same work per
//! connection and the client does the least it can: one key-exchange group (X25519), one cipher, no session reuse
//! unless a session is handed in (`connect` always makes a full handshake, `resume` offers the session it is given),
//! and no chain verification of the throw-away certificates (the signature over
//! the handshake is still checked, as OpenSSL always does). `--plain` gives bare TCP for the relay ceiling.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use openssl::ssl::{
    ShutdownResult, Ssl, SslContext, SslMethod, SslSession, SslSessionCacheMode, SslStream,
    SslVerifyMode, SslVersion,
};

use crate::args::Args;

/// No single connect, read or write may block longer than this: a stuck wrapper becomes an error, not a hang.
const IO_LIMIT: Duration = Duration::from_secs(20);

/// How to reach the wrapper, decided once per run.
pub struct Client {
    address: SocketAddr,
    tls: Option<SslContext>,
    /// `--servername NAME`: sent as SNI, and the certificate that comes back must name it (subjectAltName), so a
    /// wrapper that served its default certificate instead is an error.
    server_name: Option<String>,
}

/// One connection, encrypted or not.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Client {
    /// From `--connect HOST:PORT`, `--tls 1.3|1.2`, `--cipher aes128|chacha20`, `--servername NAME` and `--plain`.
    pub fn from_args(args: &Args) -> Result<Client, String> {
        let target = args.text("connect")?;
        let address = target
            .to_socket_addrs()
            .map_err(|e| format!("--connect {target}: {e}"))?
            .next()
            .ok_or_else(|| format!("--connect {target}: no address"))?;
        let tls = if args.flag("plain") {
            None
        } else {
            Some(tls_context(
                args.text_or("tls", "1.3"),
                args.text_or("cipher", "aes128"),
            )?)
        };
        let server_name = args.text("servername").ok().map(str::to_string);
        Ok(Client {
            address,
            tls,
            server_name,
        })
    }

    /// Connects and, unless plain, completes a fresh full handshake.
    pub fn connect(&self) -> Result<Connection, String> {
        self.handshake(None)
    }

    /// Connects offering `session` (SSL_set_session); whether the server took it is the caller's to check with
    /// [`Connection::resumed`]. Plain connections have nothing to resume.
    pub fn resume(&self, session: &SslSession) -> Result<Connection, String> {
        self.handshake(Some(session))
    }

    fn handshake(&self, session: Option<&SslSession>) -> Result<Connection, String> {
        let tcp = TcpStream::connect_timeout(&self.address, IO_LIMIT)
            .map_err(|e| format!("connect {}: {e}", self.address))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(IO_LIMIT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(IO_LIMIT))
            .map_err(|e| e.to_string())?;
        let Some(context) = &self.tls else {
            return Ok(Connection::Plain(tcp));
        };
        // A new Ssl from the context carries no session, so nothing is resumed unless one is set here.
        let mut ssl = Ssl::new(context).map_err(|e| format!("TLS setup: {e}"))?;
        if let Some(session) = session {
            // SAFETY: the session was made by a context of this same client configuration (same protocol version
            // and cipher), which is what SSL_set_session requires of it.
            unsafe { ssl.set_session(session) }.map_err(|e| format!("TLS session: {e}"))?;
        }
        if let Some(name) = &self.server_name {
            ssl.set_hostname(name)
                .map_err(|e| format!("--servername {name}: {e}"))?;
        }
        let stream = ssl.connect(tcp).map_err(|e| format!("handshake: {e}"))?;
        if let Some(name) = &self.server_name {
            check_certificate_names(&stream, name)?;
        }
        Ok(Connection::Tls(Box::new(stream)))
    }
}

/// The server's certificate must have `name` among its subjectAltName DNS names.
fn check_certificate_names(stream: &SslStream<TcpStream>, name: &str) -> Result<(), String> {
    let names_it = stream
        .ssl()
        .peer_certificate()
        .and_then(|certificate| certificate.subject_alt_names())
        .is_some_and(|names| {
            names.iter().any(|entry| {
                entry
                    .dnsname()
                    .is_some_and(|dns| dns.eq_ignore_ascii_case(name))
            })
        });
    match names_it {
        true => Ok(()),
        false => Err(format!(
            "asked for {name}, got a certificate for another name"
        )),
    }
}

fn tls_context(version: &str, cipher: &str) -> Result<SslContext, String> {
    let failure = |e: openssl::error::ErrorStack| format!("TLS client context: {e}");
    let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(failure)?;
    let pinned = match version {
        "1.3" => SslVersion::TLS1_3,
        "1.2" => SslVersion::TLS1_2,
        other => return Err(format!("--tls {other}: use 1.3 or 1.2")),
    };
    builder
        .set_min_proto_version(Some(pinned))
        .map_err(failure)?;
    builder
        .set_max_proto_version(Some(pinned))
        .map_err(failure)?;
    let (suite, legacy_list) = match cipher {
        "aes128" => (
            "TLS_AES_128_GCM_SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        ),
        "chacha20" => (
            "TLS_CHACHA20_POLY1305_SHA256",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
        ),
        other => return Err(format!("--cipher {other}: use aes128 or chacha20")),
    };
    builder.set_ciphersuites(suite).map_err(failure)?;
    builder.set_cipher_list(legacy_list).map_err(failure)?;
    builder.set_groups_list("X25519:P-256").map_err(failure)?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    Ok(builder.build())
}

impl Connection {
    /// Sends close_notify (TLS) and closes without waiting for the peer's: the server's answer is not measured.
    pub fn close(self) {
        if let Connection::Tls(mut stream) = self {
            let _: Result<ShutdownResult, _> = stream.shutdown();
        }
    }

    /// SSL_session_reused: the server accepted the offered session (an abbreviated handshake).
    pub fn resumed(&self) -> bool {
        match self {
            Connection::Plain(_) => false,
            Connection::Tls(stream) => stream.ssl().session_reused(),
        }
    }

    /// The session to offer next time (SSL_get1_session): in TLS 1.3 the newest ticket the server sent on this
    /// connection, which arrives before any application data and so has been read once an echo came back.
    pub fn session(&self) -> Option<SslSession> {
        match self {
            Connection::Plain(_) => None,
            Connection::Tls(stream) => stream.ssl().session().map(|session| session.to_owned()),
        }
    }

    /// The negotiated protocol and cipher, for the record ("plain" without TLS).
    pub fn describe(&self) -> String {
        match self {
            Connection::Plain(_) => "plain".to_string(),
            Connection::Tls(stream) => {
                let ssl = stream.ssl();
                let cipher = ssl.current_cipher().map_or("?", |c| c.name());
                format!("{} {cipher}", ssl.version_str())
            }
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.read(buffer),
            Connection::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.write(data),
            Connection::Tls(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(stream) => stream.flush(),
            Connection::Tls(stream) => stream.flush(),
        }
    }
}

/// Sends one byte and waits for it to come back through the echo backend: proof the whole path works.
pub fn echo_one_byte(connection: &mut Connection) -> Result<(), String> {
    connection
        .write_all(b"x")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = [0u8; 1];
    connection
        .read_exact(&mut answer)
        .map_err(|e| format!("read echo: {e}"))?;
    if answer != *b"x" {
        return Err("echo returned a different byte".to_string());
    }
    Ok(())
}
