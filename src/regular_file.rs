//! Opening a file sslwrap reads its configuration from (certificates, keys, CRLs, pass phrases, ticket keys): a
//! regular file or a symbolic link to one, opened without blocking, so that a FIFO or a device is refused at once
//! instead of waiting for a writer forever (a SIGHUP reload must never hang the daemon). It never reads the file.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file could not be used.
pub enum Refusal {
    /// Opening it or asking for its metadata failed.
    Unreadable(io::Error),
    /// It is a directory, a FIFO, a device or a socket.
    NotRegular,
}

/// The open file and its metadata, from the one descriptor.
pub fn open(path: &Path) -> Result<(File, Metadata), Refusal> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refusal::Unreadable)?;
    let metadata = file.metadata().map_err(Refusal::Unreadable)?;
    if !metadata.is_file() {
        return Err(Refusal::NotRegular);
    }
    Ok((file, metadata))
}
