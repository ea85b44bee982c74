//! inetd mode (no `-accept`): the superserver (inetd, xinetd, tcpserver, systemd with Accept=yes) has accepted the
//! connection and handed it over as fds 0 and 1. The session runs in this process and the exit status tells how it
//! ended. fds 0, 1 and 2 are pointed at /dev/null once taken, so nothing stray can ever reach the client.

use openssl::ssl::SslContext;

use crate::client::ClientIo;
use crate::options::Config;
use crate::privs::Identity;
use crate::session::{self, SessionStatus};
use crate::{log_error, sys};

/// Serves the one connection on fds 0/1. The descriptors are taken (and fds 0-2 pointed at /dev/null) before any
/// chroot, while /dev/null can still be opened.
pub fn run(config: &Config, context: &SslContext, identity: Option<Identity>) -> SessionStatus {
    if let Err(reason) = check_standard_input() {
        log_error!("{reason}");
        return 1;
    }
    let client = match take_client_from_stdio() {
        Ok(client) => client,
        Err(reason) => {
            log_error!("inetd mode: no usable client connection on fds 0/1: {reason}");
            return 1;
        }
    };
    if let Some(identity) = identity {
        if let Err(reason) = identity.apply() {
            log_error!("{reason}");
            return 1;
        }
    }
    session::serve(config, context, client)
}

/// Run by hand, from a terminal or with stdin redirected, sslwrap would only fail a TLS handshake nobody started:
/// say what is wrong with the setup instead. A connected socket is what superservers pass; a pipe pair is taken too.
fn check_standard_input() -> Result<(), String> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    const HOW: &str = "run sslwrap from inetd (or xinetd, tcpserver, a systemd socket unit with Accept=yes), or \
                       give -accept [ADDR:]PORT to run it as a daemon";
    let stdin = std::io::stdin();
    let kind = stdin
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata())
        .map(|metadata| metadata.file_type());
    match kind {
        Err(_) => Err(format!("standard input is closed: {HOW}")),
        Ok(kind) if kind.is_socket() && sys::is_listening_stream_socket(stdin.as_fd()) => Err(
            "standard input is a listening socket (inetd's wait mode): use nowait, or give -accept [ADDR:]PORT"
                .to_string(),
        ),
        Ok(kind) if kind.is_socket() || kind.is_fifo() => Ok(()),
        Ok(_) => Err(format!("standard input is not a network connection: {HOW}")),
    }
}

fn take_client_from_stdio() -> std::io::Result<ClientIo> {
    let read = sys::take_inherited_fd(0)?;
    let write = sys::take_inherited_fd(1)?;
    if !crate::log::stderr_is_safe_to_write() {
        sys::point_at_dev_null(2)?;
    }
    let client = ClientIo::from_pair(read, write)?;
    client.send_without_delay();
    Ok(client)
}
