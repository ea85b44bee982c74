//! The client's connection as the TLS layer sees it: a descriptor to read and one to write (the same socket in
//! daemon mode; fds 0 and 1 from inetd, which may be two descriptors of one socket), plus the addresses of both ends
//! for logs, the PROXY header and the -exec environment. It never writes anything but what OpenSSL hands it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// The two directions of the client connection.
pub struct ClientIo {
    reader: File,
    /// None when the reader's descriptor is also used for writing.
    writer: Option<File>,
    /// Bytes read from the client so far: a connection that closes before sending one is a health check.
    received: u64,
}

/// Where the client connection comes from and goes to, when it is a TCP socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientAddresses {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

impl ClientAddresses {
    /// The peer for log lines: `1.2.3.4:5678`, or a placeholder when the client is not on a TCP socket.
    pub fn peer_text(&self) -> String {
        self.peer
            .map_or_else(|| "unknown peer".to_string(), |peer| peer.to_string())
    }
}

impl ClientIo {
    /// One socket for both directions (daemon mode).
    pub fn from_socket(socket: OwnedFd) -> io::Result<ClientIo> {
        sys::set_nonblocking(socket.as_fd())?;
        Ok(ClientIo {
            reader: File::from(socket),
            writer: None,
            received: 0,
        })
    }

    /// A read and a write descriptor (inetd mode: fds 0 and 1).
    pub fn from_pair(read: OwnedFd, write: OwnedFd) -> io::Result<ClientIo> {
        sys::set_nonblocking(read.as_fd())?;
        sys::set_nonblocking(write.as_fd())?;
        Ok(ClientIo {
            reader: File::from(read),
            writer: Some(File::from(write)),
            received: 0,
        })
    }

    pub fn read_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// How many bytes have been read from the client (a PROXY header, plaintext, TLS records).
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn write_fd(&self) -> RawFd {
        self.writer.as_ref().unwrap_or(&self.reader).as_raw_fd()
    }

    /// The addresses of the read descriptor's socket, if it is a TCP socket.
    pub fn addresses(&self) -> ClientAddresses {
        let Ok(copy) = self.reader.as_fd().try_clone_to_owned() else {
            return ClientAddresses::default();
        };
        let socket = TcpStream::from(copy);
        ClientAddresses {
            peer: socket.peer_addr().ok(),
            local: socket.local_addr().ok(),
        }
    }

    /// Sends small writes at once (handshake flights, short replies) instead of waiting for the peer's delayed ACK;
    /// best effort, for a client that is not on a TCP socket.
    pub fn send_without_delay(&self) {
        if let Ok(copy) = self.reader.as_fd().try_clone_to_owned() {
            let _ = TcpStream::from(copy).set_nodelay(true);
        }
    }

    /// Tells the client no more data will come (plaintext sessions only; TLS sends close_notify instead).
    pub fn shutdown_write(&self) -> io::Result<()> {
        let socket = self
            .writer
            .as_ref()
            .unwrap_or(&self.reader)
            .as_fd()
            .try_clone_to_owned()?;
        TcpStream::from(socket).shutdown(std::net::Shutdown::Write)
    }

    fn writer(&mut self) -> &mut File {
        self.writer.as_mut().unwrap_or(&mut self.reader)
    }
}

impl Read for ClientIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.reader.read(buf)?;
        self.received += count as u64;
        Ok(count)
    }
}

impl Write for ClientIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
