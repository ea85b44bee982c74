//! `-pidfile FILE`: the daemon parent's process ID, written once the daemon listens (before it tells a service
//! manager it is ready) and removed when the parent exits. It never follows a symbolic link at FILE, never removes a
//! file that names another process (a successor's), and is never written or removed by a session process.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::log_warning;
use crate::regular_file;

/// A written pid file; dropping it in the process that wrote it removes it.
pub struct PidFile {
    path: PathBuf,
    contents: String,
    writer: u32,
}

impl PidFile {
    /// Writes this process's ID and a newline to `path`, replacing a stale file; an error names the file.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let writer = std::process::id();
        let contents = format!("{writer}\n");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .map_err(|e| format!("-pidfile: cannot write {}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            contents,
            writer,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::process::id() != self.writer {
            return;
        }
        if still_names(&self.path, &self.contents) {
            if let Err(error) = std::fs::remove_file(&self.path) {
                log_warning!("-pidfile: cannot remove {}: {error}", self.path.display());
            }
        }
    }
}

/// Whether the file at `path` still holds exactly `contents`: read without blocking and only if it is a regular file,
/// so that whatever was put at the path meanwhile (a FIFO, a device) never holds up the daemon's exit.
fn still_names(path: &Path, contents: &str) -> bool {
    use std::io::Read;
    let Ok((file, _)) = regular_file::open(path) else {
        return false;
    };
    let mut now = String::new();
    // One byte more than expected is enough to tell a longer file apart.
    file.take(contents.len() as u64 + 1)
        .read_to_string(&mut now)
        .is_ok_and(|_| now == contents)
}
