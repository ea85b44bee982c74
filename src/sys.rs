//! The one home of `unsafe`: thin wrappers around the libc and OpenSSL calls that std and the `openssl` crate do not
//! offer (poll, fork, waitpid, signalfd, descriptor juggling, user lookup, set*id, malloc_trim, the idle stack
//! release, two OpenSSL context knobs, SSL_has_pending, OPENSSL_cleanse, pidfd, kill, close-on-exec for inherited
//! descriptors, secure-heap PEM reading, PKCS#8 and preset-curve EC key decoding, decrypting a key with its pass
//! phrase, the session ticket key callback, adding a CRL to a trust store, the time left until an OCSP nextUpdate, a
//! flag shared with forked processes, socket options, the environment, the monotonic clock, no_new_privs and the
//! seccomp filter), and the two poll helpers built on them. Each wrapper is small, returns `io::Result` where the
//! call can fail, and states why its block is sound. Nothing outside this file may use `unsafe`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub use libc::{POLLIN, POLLOUT, pollfd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Waits for readiness on the given descriptors; `None` waits without a time limit. Returns how many are ready
/// (0 = timed out). An interrupted wait reports 0 ready descriptors so callers simply look again.
pub fn poll(fds: &mut [pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // Rounded up: a wait cut short by a fraction of a millisecond would look like a wake-up before the deadline.
    let millis = timeout.map_or(-1, |t| {
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the duration of the call and its length is
    // passed alongside it.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    match check(ready) {
        Ok(count) => Ok(count as usize),
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(error) => Err(error),
    }
}

/// A pollfd entry asking for `events` on `fd`.
pub fn poll_entry(fd: RawFd, events: libc::c_short) -> pollfd {
    pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Adds interest in `events` on `fd` to a poll set, merging with an entry for the same descriptor (fds 0 and 1 of
/// one socket, or one socket for both directions); no interest, no entry.
pub fn push_entry(entries: &mut Vec<pollfd>, fd: RawFd, events: libc::c_short) {
    if events == 0 {
        return;
    }
    if let Some(existing) = entries.iter_mut().find(|entry| entry.fd == fd) {
        existing.events |= events;
    } else {
        entries.push(poll_entry(fd, events));
    }
}

/// Waits until `fd` is ready for `events` or the deadline passes; Ok(false) on timeout.
pub fn wait_until(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut entry = [poll_entry(fd, events)];
        if poll(&mut entry, Some(left))? > 0 {
            return Ok(true);
        }
    }
}

/// Puts a descriptor in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads and sets status flags of a descriptor the borrow keeps open.
    unsafe {
        let flags = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// An integer socket option (SOL_SOCKET level) of a descriptor.
fn socket_option(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into our local integer and updates `length`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut length,
        )
    })?;
    Ok(value)
}

/// Whether a descriptor is a stream socket in the listening state (what a service manager passes with Accept=no).
pub fn is_listening_stream_socket(fd: BorrowedFd<'_>) -> bool {
    socket_option(fd, libc::SO_TYPE).is_ok_and(|kind| kind == libc::SOCK_STREAM)
        && socket_option(fd, libc::SO_ACCEPTCONN).is_ok_and(|listening| listening != 0)
}

/// Whether a descriptor is a socket at all (inetd passes a connected one on fds 0 and 1).
pub fn is_socket(fd: BorrowedFd<'_>) -> bool {
    socket_option(fd, libc::SO_TYPE).is_ok()
}

/// Removes a variable from the environment, so that no program started later inherits it.
pub fn forget_environment_variable(name: &str) {
    // SAFETY: called only at start-up, from main before any thread exists, so nothing reads the environment at the
    // same time.
    unsafe { std::env::remove_var(name) };
}

/// CLOCK_MONOTONIC in microseconds, the clock a service manager compares reload times against.
pub fn monotonic_microseconds() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our local variable; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Takes ownership of a descriptor inherited from the parent process (inetd's fds 0/1, `-fd N`): a new descriptor
/// (close-on-exec) is made for it, and the original number is pointed at /dev/null, so no stray write to fd 0/1/2 can
/// ever reach the client and no child program inherits it by accident.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a fresh descriptor that nothing else owns; we wrap it in OwnedFd right away.
    let copy = unsafe { check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3))? };
    // SAFETY: `copy` was just created by fcntl above and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(copy) };
    point_at_dev_null(fd)?;
    Ok(owned)
}

/// Takes ownership of an inherited descriptor above 2 (`-fd N`) as it is, marking it close-on-exec. Unlike fds 0-2 it
/// needs no /dev/null stand-in, so this also works after a chroot.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; an unopened number returns EBADF.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
    }
    // SAFETY: the descriptor is open (checked above), inherited from our parent, and adopted exactly once: `-fd N`
    // names it once and each process serves one session.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `fd` refer to /dev/null (for fds 0/1/2 once their real file is no longer to be written).
pub fn point_at_dev_null(fd: RawFd) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 atomically replaces `fd` (an inherited descriptor this process owns) with a copy of /dev/null;
    // `null` stays valid during the call and is closed when dropped.
    unsafe { check(libc::dup2(null.as_raw_fd(), fd))? };
    Ok(())
}

// SAFETY: these declarations match the prototypes in OpenSSL 3's <openssl/crypto.h> and <openssl/ssl.h>.
unsafe extern "C" {
    /// libcrypto's memset that the compiler cannot remove as a dead store.
    fn OPENSSL_cleanse(pointer: *mut libc::c_void, length: usize);
    /// libssl: whether received bytes wait inside the SSL object (not exposed by the `openssl` crate).
    fn SSL_has_pending(ssl: *const openssl_sys::SSL) -> libc::c_int;
}

/// Whether OpenSSL holds received bytes that SSL_read has not returned yet (a record, or part of one read ahead):
/// poll(2) on the socket cannot see them.
pub fn holds_unread_input(ssl: &openssl::ssl::SslRef) -> bool {
    use foreign_types::ForeignTypeRef;
    // SAFETY: the reference keeps the SSL object alive for the call; SSL_has_pending only reads it.
    unsafe { SSL_has_pending(ssl.as_ptr()) != 0 }
}

/// Overwrites secret bytes before their memory is given back.
fn cleanse(secret: &mut [u8]) {
    // SAFETY: the pointer and length describe one live, exclusively borrowed slice.
    unsafe { OPENSSL_cleanse(secret.as_mut_ptr().cast(), secret.len()) }
}

/// sslwrap's own copy of a file that may hold a private key, in one allocation that never moves: overwritten when
/// dropped, on every path out, because the daemon parent's freed heap is inherited by every child. It covers this
/// buffer only: the copies OpenSSL makes while parsing are OpenSSL's, and tls.rs (load_private_key) says which of
/// them OpenSSL clears.
pub struct Secret(Vec<u8>);

impl Secret {
    /// Reads at most `length` bytes into one allocation made up front, so no reallocation leaves a partial copy
    /// behind; on an error the bytes read so far are overwritten like any other.
    pub fn read_at_most(source: impl io::Read, length: usize) -> io::Result<Secret> {
        let mut secret = Secret(Vec::with_capacity(length));
        // Take ends the read at the capacity, so read_to_end never has to grow (and copy) the vector.
        io::Read::read_to_end(&mut source.take(length as u64), &mut secret.0)?;
        Ok(secret)
    }

    /// Reads up to the first newline, which is not kept, or to the end of input, but at most `limit` bytes; one byte
    /// per read, so that nothing after the line is taken from a pipe or terminal and left in a buffer of std's.
    /// None when the input ends before its first byte.
    pub fn read_line(mut source: impl io::Read, limit: usize) -> io::Result<Option<Secret>> {
        let mut line = Secret(Vec::with_capacity(limit));
        let mut byte = [0u8; 1];
        let result = loop {
            if line.0.len() == limit {
                break Ok(Some(line));
            }
            match source.read(&mut byte) {
                Ok(0) if line.0.is_empty() => break Ok(None),
                Ok(0) => break Ok(Some(line)),
                Ok(_) if byte[0] == b'\n' => break Ok(Some(line)),
                // Within the capacity reserved above: the vector never moves.
                Ok(_) => line.0.push(byte[0]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        cleanse(&mut byte);
        result
    }
}

/// Takes over bytes already read (an environment variable's value, a command-line word): the allocation is the
/// vector's own, so it is that copy which is overwritten.
impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl std::ops::Deref for Secret {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        cleanse(&mut self.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Key and certificate files through OpenSSL's own PEM and DER parsers (used by tls.rs), without OpenSSL 3's generic
// key decoder: that decoder builds its whole table of decoders first, about 4 M instructions, a sixth of an
// inetd-mode connection. Every byte is still parsed by OpenSSL; sslwrap only picks which of its parsers runs.
// ---------------------------------------------------------------------------------------------------------------

// SAFETY: these declarations match the prototypes in OpenSSL 3's <openssl/pem.h>, <openssl/crypto.h> and
// <openssl/x509.h> (the `openssl-sys` crate does not declare them).
unsafe extern "C" {
    fn PEM_bytes_read_bio_secmem(
        data: *mut *mut u8,
        length: *mut libc::c_long,
        label: *mut *mut libc::c_char,
        wanted: *const libc::c_char,
        bio: *mut openssl_sys::BIO,
        pass_phrase: Option<PassPhraseCallback>,
        user_data: *mut libc::c_void,
    ) -> libc::c_int;
    fn CRYPTO_secure_clear_free(
        pointer: *mut libc::c_void,
        length: usize,
        file: *const libc::c_char,
        line: libc::c_int,
    );
    fn CRYPTO_secure_free(pointer: *mut libc::c_void, file: *const libc::c_char, line: libc::c_int);
    fn PKCS8_pkey_get0(
        algorithm: *mut *const openssl_sys::ASN1_OBJECT,
        key: *mut *const u8,
        key_length: *mut libc::c_int,
        algorithm_identifier: *mut *const openssl_sys::X509_ALGOR,
        info: *const openssl_sys::PKCS8_PRIV_KEY_INFO,
    ) -> libc::c_int;
}

type PassPhraseCallback =
    extern "C" fn(*mut libc::c_char, libc::c_int, libc::c_int, *mut libc::c_void) -> libc::c_int;

/// Gives OpenSSL no pass phrase (0 bytes), so that it never prompts on a terminal; tls.rs hands an encrypted key to
/// decrypt_private_key instead, before any is read here.
extern "C" fn no_pass_phrase(
    _buffer: *mut libc::c_char,
    _size: libc::c_int,
    _for_writing: libc::c_int,
    _user_data: *mut libc::c_void,
) -> libc::c_int {
    0
}

/// Reads PEM blocks out of bytes in memory with PEM_bytes_read_bio_secmem: every block, wanted or skipped on the
/// way, is decoded into OpenSSL's secure-heap allocations, which OpenSSL clears when it frees them (also without a
/// secure heap set up, when they are ordinary memory).
pub struct SecurePemReader<'a> {
    bio: *mut openssl_sys::BIO,
    _pem: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> SecurePemReader<'a> {
    pub fn new(pem: &'a [u8]) -> Result<SecurePemReader<'a>, openssl::error::ErrorStack> {
        let length =
            libc::c_int::try_from(pem.len()).map_err(|_| openssl::error::ErrorStack::get())?;
        // SAFETY: BIO_new_mem_buf makes a read-only BIO over the slice without copying it; the PhantomData borrow
        // keeps the slice alive and unchanged for as long as the BIO exists.
        let bio = unsafe { openssl_sys::BIO_new_mem_buf(pem.as_ptr().cast(), length) };
        if bio.is_null() {
            return Err(openssl::error::ErrorStack::get());
        }
        Ok(SecurePemReader {
            bio,
            _pem: std::marker::PhantomData,
        })
    }

    /// The next block whose label OpenSSL's PEM matching accepts for `wanted` ("CERTIFICATE" also takes
    /// "X509 CERTIFICATE"; "ANY PRIVATE KEY" takes any private key label), skipping the others; Ok(None) when no
    /// block is left.
    pub fn next_block(
        &mut self,
        wanted: &CStr,
    ) -> Result<Option<SecurePemBlock>, openssl::error::ErrorStack> {
        let mut data = std::ptr::null_mut();
        let mut length: libc::c_long = 0;
        let mut label = std::ptr::null_mut();
        // SAFETY: the BIO is live (owned by self); the three out-pointers are locals; `wanted` is NUL-terminated;
        // the callback matches pem_password_cb and ignores its arguments.
        let found = unsafe {
            PEM_bytes_read_bio_secmem(
                &mut data,
                &mut length,
                &mut label,
                wanted.as_ptr(),
                self.bio,
                Some(no_pass_phrase),
                std::ptr::null_mut(),
            )
        };
        if found != 1 {
            // SAFETY: ERR_peek_last_error only reads this thread's error queue.
            let last = unsafe { openssl_sys::ERR_peek_last_error() };
            let end_of_input = openssl_sys::ERR_GET_LIB(last) == openssl_sys::ERR_LIB_PEM
                && openssl_sys::ERR_GET_REASON(last) == openssl_sys::PEM_R_NO_START_LINE;
            let errors = openssl::error::ErrorStack::get();
            return if end_of_input { Ok(None) } else { Err(errors) };
        }
        // A successful call always returns a label and data; a negative length never comes with success.
        Ok(Some(SecurePemBlock {
            label,
            data,
            length: usize::try_from(length).unwrap_or(0),
        }))
    }
}

impl Drop for SecurePemReader<'_> {
    fn drop(&mut self) {
        // SAFETY: the BIO (a lone one, no chain) was made by BIO_new_mem_buf in `new` and is freed once, here.
        unsafe {
            openssl_sys::BIO_free_all(self.bio);
        }
    }
}

/// One decoded PEM block, its label and DER on OpenSSL's secure heap; both are cleared and freed when dropped.
pub struct SecurePemBlock {
    label: *mut libc::c_char,
    data: *mut u8,
    length: usize,
}

impl SecurePemBlock {
    /// The label between "-----BEGIN " and "-----".
    pub fn label(&self) -> &[u8] {
        // SAFETY: PEM_bytes_read_bio_secmem returned a NUL-terminated label that lives until `self` is dropped.
        unsafe { CStr::from_ptr(self.label) }.to_bytes()
    }
}

impl std::ops::Deref for SecurePemBlock {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.data.is_null() {
            return &[];
        }
        // SAFETY: OpenSSL returned `length` bytes at `data`, owned by `self` until it is dropped.
        unsafe { std::slice::from_raw_parts(self.data, self.length) }
    }
}

impl Drop for SecurePemBlock {
    fn drop(&mut self) {
        let file = c"sslwrap sys.rs";
        // SAFETY: both pointers came from PEM_bytes_read_bio_secmem, which documents them as secure-heap memory
        // to give back with the secure free functions; each is freed exactly once, here, the data with its length.
        unsafe {
            CRYPTO_secure_clear_free(self.data.cast(), self.length, file.as_ptr(), 0);
            CRYPTO_secure_free(self.label.cast(), file.as_ptr(), 0);
        }
    }
}

/// A PKCS#8 PrivateKeyInfo decoded by d2i_PKCS8_PRIV_KEY_INFO; OpenSSL overwrites its copy of the inner key when it
/// frees it (the structure's free callback cleanses it).
pub struct Pkcs8PrivateKeyInfo(*mut openssl_sys::PKCS8_PRIV_KEY_INFO);

impl Pkcs8PrivateKeyInfo {
    pub fn from_der(der: &[u8]) -> Result<Pkcs8PrivateKeyInfo, openssl::error::ErrorStack> {
        let length =
            libc::c_long::try_from(der.len()).map_err(|_| openssl::error::ErrorStack::get())?;
        let mut input = der.as_ptr();
        // SAFETY: d2i reads at most `length` bytes from the slice and returns a new structure or null.
        let info = unsafe {
            openssl_sys::d2i_PKCS8_PRIV_KEY_INFO(std::ptr::null_mut(), &mut input, length)
        };
        if info.is_null() {
            return Err(openssl::error::ErrorStack::get());
        }
        Ok(Pkcs8PrivateKeyInfo(info))
    }

    fn algorithm_identifier(&self) -> *const openssl_sys::X509_ALGOR {
        let mut identifier = std::ptr::null();
        // SAFETY: the structure is live (owned by self); PKCS8_pkey_get0 only writes the one out-pointer given.
        unsafe {
            PKCS8_pkey_get0(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut identifier,
                self.0,
            );
        }
        identifier
    }

    /// The key's algorithm (OBJ_obj2nid of the AlgorithmIdentifier).
    pub fn algorithm(&self) -> openssl::nid::Nid {
        let mut object = std::ptr::null();
        // SAFETY: the structure is live; PKCS8_pkey_get0 writes a pointer into it, valid while self lives, and
        // OBJ_obj2nid only reads that object.
        let nid = unsafe {
            PKCS8_pkey_get0(
                &mut object,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                self.0,
            );
            openssl_sys::OBJ_obj2nid(object)
        };
        openssl::nid::Nid::from_raw(nid)
    }

    /// The named curve in the algorithm's parameters; None when they are anything but one object identifier
    /// (explicit curve parameters, none at all).
    pub fn named_curve(&self) -> Option<openssl::nid::Nid> {
        let mut parameter_type: libc::c_int = 0;
        let mut parameter = std::ptr::null();
        // SAFETY: the identifier belongs to the live structure; X509_ALGOR_get0 writes the two locals with the
        // parameter's type and a pointer into the structure, an ASN1_OBJECT when the type is V_ASN1_OBJECT.
        let nid = unsafe {
            openssl_sys::X509_ALGOR_get0(
                std::ptr::null_mut(),
                &mut parameter_type,
                &mut parameter,
                self.algorithm_identifier(),
            );
            if parameter_type != openssl_sys::V_ASN1_OBJECT || parameter.is_null() {
                return None;
            }
            openssl_sys::OBJ_obj2nid(parameter.cast())
        };
        Some(openssl::nid::Nid::from_raw(nid))
    }

    /// The privateKey octets: a PKCS#1 or SEC1 structure for RSA and EC.
    pub fn private_key(&self) -> &[u8] {
        let mut key = std::ptr::null();
        let mut length: libc::c_int = 0;
        // SAFETY: the structure is live; PKCS8_pkey_get0 points `key` at `length` bytes inside it, valid while
        // self is borrowed.
        unsafe {
            PKCS8_pkey_get0(
                std::ptr::null_mut(),
                &mut key,
                &mut length,
                std::ptr::null_mut(),
                self.0,
            );
            if key.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(key, usize::try_from(length).unwrap_or(0))
        }
    }
}

impl Drop for Pkcs8PrivateKeyInfo {
    fn drop(&mut self) {
        // SAFETY: the structure came from d2i_PKCS8_PRIV_KEY_INFO and is freed exactly once, here.
        unsafe { openssl_sys::PKCS8_PRIV_KEY_INFO_free(self.0) }
    }
}

/// A SEC1 ECPrivateKey on `curve` (d2i_ECPrivateKey into a key whose group is already set): PKCS#8 names the curve
/// in its AlgorithmIdentifier, and the SEC1 part inside may then leave its own parameters out.
pub fn ec_private_key_on_curve(
    curve: openssl::nid::Nid,
    sec1: &[u8],
) -> Result<openssl::ec::EcKey<openssl::pkey::Private>, openssl::error::ErrorStack> {
    use foreign_types::ForeignType;
    let length =
        libc::c_long::try_from(sec1.len()).map_err(|_| openssl::error::ErrorStack::get())?;
    // SAFETY: EC_KEY_new_by_curve_name returns a new key (or null) that we own.
    let key = unsafe { openssl_sys::EC_KEY_new_by_curve_name(curve.as_raw()) };
    if key.is_null() {
        return Err(openssl::error::ErrorStack::get());
    }
    // SAFETY: `key` is the live key made above and owned here; d2i_ECPrivateKey fills that key in place (it
    // never replaces or frees a key it was given) and reads at most `length` bytes of the slice.
    unsafe {
        let mut target = key;
        let mut input = sec1.as_ptr();
        if openssl_sys::d2i_ECPrivateKey(&mut target, &mut input, length).is_null() {
            openssl_sys::EC_KEY_free(key);
            return Err(openssl::error::ErrorStack::get());
        }
        Ok(openssl::ec::EcKey::from_ptr(key))
    }
}

/// The first private key of a PEM file that is encrypted with a pass phrase (PKCS#8 `ENCRYPTED PRIVATE KEY`, or a
/// traditional block with `Proc-Type: 4,ENCRYPTED`), decrypted by OpenSSL's generic reader (PEM_read_bio_PrivateKey),
/// which OpenSSL 3 runs through its decoders and then, if they fail, through its legacy reader: the pass phrase may
/// be asked for more than once, and every ask gets it (the `openssl` crate's callback would panic on a second one).
pub fn decrypt_private_key(
    pem: &[u8],
    pass_phrase: &[u8],
) -> Result<openssl::pkey::PKey<openssl::pkey::Private>, openssl::error::ErrorStack> {
    use foreign_types::ForeignType;
    let length = libc::c_int::try_from(pem.len()).map_err(|_| openssl::error::ErrorStack::get())?;
    // SAFETY: BIO_new_mem_buf makes a read-only BIO over the slice without copying it; the BIO is freed below,
    // before the borrow of `pem` ends.
    let bio = unsafe { openssl_sys::BIO_new_mem_buf(pem.as_ptr().cast(), length) };
    if bio.is_null() {
        return Err(openssl::error::ErrorStack::get());
    }
    let mut answer: &[u8] = pass_phrase;
    // SAFETY: the BIO is live; the callback matches pem_password_cb, and its user data points at `answer`, a slice
    // that outlives the call; the BIO is freed exactly once, after the call.
    let key = unsafe {
        let key = openssl_sys::PEM_read_bio_PrivateKey(
            bio,
            std::ptr::null_mut(),
            Some(give_pass_phrase),
            (&mut answer as *mut &[u8]).cast(),
        );
        openssl_sys::BIO_free_all(bio);
        key
    };
    if key.is_null() {
        return Err(openssl::error::ErrorStack::get());
    }
    // SAFETY: PEM_read_bio_PrivateKey returned a new key that nothing else owns.
    Ok(unsafe { openssl::pkey::PKey::from_ptr(key) })
}

/// The pem_password_cb of decrypt_private_key: copies the pass phrase into OpenSSL's buffer, which OpenSSL clears
/// after use; -1 (OpenSSL's "no pass phrase") when it does not fit, rather than a cut one.
// SAFETY: only OpenSSL calls it, as a pem_password_cb, with a buffer of `size` bytes and the user data that
// decrypt_private_key passed; the body relies on nothing else.
unsafe extern "C" fn give_pass_phrase(
    buffer: *mut libc::c_char,
    size: libc::c_int,
    _for_writing: libc::c_int,
    answer: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `answer` is the `&[u8]` that decrypt_private_key passed as user data, alive during the whole call.
    let pass_phrase: &[u8] = unsafe { *answer.cast::<&[u8]>() };
    let Ok(length) = libc::c_int::try_from(pass_phrase.len()) else {
        return -1;
    };
    if length > size {
        return -1;
    }
    // SAFETY: OpenSSL's buffer holds `size` bytes, at least `length`; the two memory areas are distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(pass_phrase.as_ptr(), buffer.cast::<u8>(), pass_phrase.len())
    };
    length
}

// SAFETY: this declaration matches the prototype in OpenSSL 3's <openssl/x509_vfy.h> (the `openssl-sys` crate does
// not declare it).
unsafe extern "C" {
    fn X509_STORE_add_crl(
        store: *mut openssl_sys::X509_STORE,
        crl: *mut openssl_sys::X509_CRL,
    ) -> libc::c_int;
}

/// Adds a certificate revocation list to a trust store (X509_STORE_add_crl, which the `openssl` crate does not
/// offer); the store takes its own reference, so the caller keeps `crl`.
pub fn add_crl_to_store(
    store: &mut openssl::x509::store::X509StoreBuilderRef,
    crl: &openssl::x509::X509CrlRef,
) -> Result<(), openssl::error::ErrorStack> {
    use foreign_types::ForeignTypeRef;
    // SAFETY: both references keep their objects alive for the call; X509_STORE_add_crl only raises the CRL's
    // reference count (X509_CRL_up_ref) and never frees what it is given.
    let added = unsafe { X509_STORE_add_crl(store.as_ptr(), crl.as_ptr()) };
    if added == 1 {
        Ok(())
    } else {
        Err(openssl::error::ErrorStack::get())
    }
}

/// Seconds from now until `time`, negative once it has passed (ASN1_TIME_diff from the current time; the `openssl`
/// crate offers it only for ASN1_TIME, while OCSP's times are GeneralizedTime). None for a time OpenSSL cannot read.
pub fn seconds_until(time: &openssl::asn1::Asn1GeneralizedTimeRef) -> Option<i64> {
    use foreign_types::ForeignTypeRef;
    let (mut days, mut seconds) = (0, 0);
    // SAFETY: the reference keeps the time alive for the call; a GeneralizedTime is an ASN1_STRING, the type
    // ASN1_TIME_diff reads (it accepts both UTCTime and GeneralizedTime); a null `from` means the current time; the
    // two outputs are valid, exclusively borrowed ints.
    let known = unsafe {
        openssl_sys::ASN1_TIME_diff(
            &mut days,
            &mut seconds,
            std::ptr::null(),
            time.as_ptr().cast::<openssl_sys::ASN1_TIME>(),
        )
    };
    (known == 1).then(|| i64::from(days) * 86_400 + i64::from(seconds))
}

/// A flag shared by the process that makes it and every process forked from it afterwards (one anonymous shared
/// mapping, mmap MAP_SHARED): what one daemon session process sets, the others and later ones see. Unmapped when
/// dropped, in each process on its own.
pub struct SharedFlag(std::ptr::NonNull<std::sync::atomic::AtomicBool>);

// SAFETY: the mapping holds one AtomicBool, which may be used from any thread, and stays mapped until Drop.
unsafe impl Send for SharedFlag {}
// SAFETY: as for Send: only atomic operations touch the mapping.
unsafe impl Sync for SharedFlag {}

impl SharedFlag {
    pub fn new() -> io::Result<SharedFlag> {
        // SAFETY: a new anonymous mapping with no address hint and no descriptor; the result is checked against
        // MAP_FAILED before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<std::sync::atomic::AtomicBool>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // An anonymous mapping is page-aligned and zero-filled, and a zero byte is a valid AtomicBool (false).
        std::ptr::NonNull::new(address.cast())
            .map(SharedFlag)
            .ok_or_else(|| io::Error::other("mmap returned a null address"))
    }

    /// Sets the flag; true if it was set already, by this process or a related one.
    pub fn set(&self) -> bool {
        // SAFETY: the pointer is the live mapping made in new, aligned and initialised (see there).
        let flag = unsafe { self.0.as_ref() };
        flag.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SharedFlag {
    fn drop(&mut self) {
        // SAFETY: the address and length are those of the mapping made in new, which nothing uses after this.
        unsafe {
            libc::munmap(
                self.0.as_ptr().cast(),
                std::mem::size_of::<std::sync::atomic::AtomicBool>(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// End of the key and certificate file parsers.
// ---------------------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------------------
// Session tickets sealed with the -ticketkey keys (ticket_keys.rs). The keys live in the context's extra data, so
// they are freed (and wiped) with the context: a daemon that reloads every hour keeps one list, never a pile.
// ---------------------------------------------------------------------------------------------------------------

// SAFETY: a type only: the signature OpenSSL's SSL_CTX_set_tlsext_ticket_key_evp_cb expects of its callback.
type TicketKeyCallback = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *mut u8,
    *mut u8,
    *mut openssl_sys::EVP_CIPHER_CTX,
    *mut openssl_sys::EVP_MAC_CTX,
    libc::c_int,
) -> libc::c_int;

// SAFETY: these declarations match the prototypes in OpenSSL 3's <openssl/ssl.h> and <openssl/params.h>.
unsafe extern "C" {
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        context: *mut openssl_sys::SSL_CTX,
        callback: Option<TicketKeyCallback>,
    ) -> libc::c_int;
    fn OSSL_PARAM_construct_utf8_string(
        key: *const libc::c_char,
        value: *mut libc::c_char,
        length: usize,
    ) -> openssl_sys::OSSL_PARAM;
}

/// The context's extra-data slot for its ticket keys: one slot for the whole program, made on first use.
static TICKET_KEYS_SLOT: std::sync::OnceLock<
    openssl::ex_data::Index<openssl::ssl::SslContext, crate::ticket_keys::TicketKeys>,
> = std::sync::OnceLock::new();

/// Makes the context seal and open session tickets (TLS 1.2 and 1.3) with `keys` instead of its own random key
/// (SSL_CTX_set_tlsext_ticket_key_evp_cb); the context owns the keys from now on.
pub fn seal_tickets_with(
    context: &mut openssl::ssl::SslContextBuilder,
    keys: crate::ticket_keys::TicketKeys,
) -> Result<(), openssl::error::ErrorStack> {
    let slot = match TICKET_KEYS_SLOT.get() {
        Some(slot) => *slot,
        None => {
            let made = openssl::ssl::SslContext::new_ex_index()?;
            *TICKET_KEYS_SLOT.get_or_init(|| made)
        }
    };
    context.set_ex_data(slot, keys);
    let callback: TicketKeyCallback = ticket_key_for;
    // SAFETY: the builder owns a valid SSL_CTX; the callback is a plain extern "C" fn that lives for the whole
    // program and finds its keys through the SSL it is given.
    let set = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(context.as_ptr(), Some(callback)) };
    if set != 1 {
        return Err(openssl::error::ErrorStack::get());
    }
    Ok(())
}

/// What the ticket callback answers OpenSSL (the values of SSL_CTX_set_tlsext_ticket_key_evp_cb(3)).
const TICKET_FAILED: libc::c_int = -1;
const TICKET_NOT_OURS: libc::c_int = 0;
const TICKET_DONE: libc::c_int = 1;
const TICKET_DONE_RENEW: libc::c_int = 2;

/// OpenSSL's ticket key callback. Sealing (`sealing` = 1): names the first key in `name`, fills `iv` with random
/// bytes and sets the cipher and HMAC up with that key. Opening (`sealing` = 0): finds the key `name` names and sets
/// them up with it; a ticket of an older key also asks OpenSSL to give the client a new ticket, sealed with the first
/// key, so clients move over before the older key is dropped. A ticket of no key known means a full handshake.
// SAFETY: only OpenSSL calls it, as the ticket key callback, with the pointers its manual page describes (a live
// SSL, a 16-byte name, an IV of the cipher's length, and contexts to set up); the body relies on nothing else.
unsafe extern "C" fn ticket_key_for(
    ssl: *mut openssl_sys::SSL,
    name: *mut u8,
    iv: *mut u8,
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    mac: *mut openssl_sys::EVP_MAC_CTX,
    sealing: libc::c_int,
) -> libc::c_int {
    use crate::ticket_keys::{KEY_NAME_BYTES, Opening};
    use foreign_types::ForeignTypeRef;
    let Some(&slot) = TICKET_KEYS_SLOT.get() else {
        return TICKET_FAILED;
    };
    // SAFETY: OpenSSL calls with the live SSL of the handshake under way.
    let ssl = unsafe { openssl::ssl::SslRef::from_ptr(ssl) };
    let Some(keys) = ssl.ssl_context().ex_data(slot) else {
        return TICKET_FAILED;
    };
    // SAFETY: `name` is the callback's 16-byte key_name array, which OpenSSL lets us read and (sealing) write for
    // the length of the call.
    let name = unsafe { std::slice::from_raw_parts_mut(name, KEY_NAME_BYTES) };
    if sealing == 1 {
        let key = keys.sealing();
        let iv_length = key.cipher().iv_len().unwrap_or(0);
        // SAFETY: `iv` is the callback's EVP_MAX_IV_LENGTH (16) byte array; an AES-CBC IV is 16 bytes.
        let iv_bytes = unsafe { std::slice::from_raw_parts_mut(iv, iv_length) };
        if openssl::rand::rand_bytes(iv_bytes).is_err() {
            return TICKET_FAILED;
        }
        name.copy_from_slice(key.name());
        return match set_up_ticket_crypto(key, iv, cipher, mac, true) {
            true => TICKET_DONE,
            false => TICKET_FAILED,
        };
    }
    let (key, answer) = match keys.opening(name) {
        None => return TICKET_NOT_OURS,
        Some(Opening::Current(key)) => (key, TICKET_DONE),
        Some(Opening::Previous(key)) => (key, TICKET_DONE_RENEW),
    };
    match set_up_ticket_crypto(key, iv, cipher, mac, false) {
        true => answer,
        false => TICKET_FAILED,
    }
}

/// Keys the ticket's HMAC-SHA256 and its AES-CBC (for sealing or for opening) as the callback must; false on failure.
fn set_up_ticket_crypto(
    key: &crate::ticket_keys::TicketKey,
    iv: *const u8,
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    mac: *mut openssl_sys::EVP_MAC_CTX,
    sealing: bool,
) -> bool {
    let secret = key.hmac_secret();
    // SAFETY: the parameters point at the key's secret and at a static string, both alive until after
    // EVP_MAC_CTX_set_params has copied them; OpenSSL only reads through the pointers, and the end marker closes the
    // array.
    let parameters = unsafe {
        [
            openssl_sys::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                secret.as_ptr().cast_mut().cast(),
                secret.len(),
            ),
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), c"SHA256".as_ptr().cast_mut(), 0),
            openssl_sys::OSSL_PARAM_construct_end(),
        ]
    };
    let start = if sealing {
        openssl_sys::EVP_EncryptInit_ex
    } else {
        openssl_sys::EVP_DecryptInit_ex
    };
    // SAFETY: OpenSSL handed us both contexts for this call; the cipher is a static EVP_CIPHER; the AES key has the
    // cipher's key length and `iv` is the callback's IV array, 16 bytes, AES-CBC's IV length.
    unsafe {
        openssl_sys::EVP_MAC_CTX_set_params(mac, parameters.as_ptr()) == 1
            && start(
                cipher,
                key.cipher().as_ptr(),
                std::ptr::null_mut(),
                key.aes_key().as_ptr(),
                iv,
            ) == 1
    }
}

/// Hands freed heap pages back to the kernel. After a handshake a forked session holds a few hundred KiB of freed
/// OpenSSL scratch memory that would otherwise stay private to it for the whole (possibly long, idle) session.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How far below the caller's frame `release_unused_stack` reaches: deeper than a handshake goes (OpenSSL's takes
/// about 32 KiB).
const UNUSED_STACK_REACH: usize = 256 * 1024;

/// How deep into the main thread's stack the caller's frame may be for the release to happen. Linux keeps the stack
/// size limit plus a guard gap (stack_guard_gap, 1 MiB by default) below the top of the main thread's stack free of
/// any other mapping, so a frame this close to the top, and UNUSED_STACK_REACH below it, lie on that stack or in
/// that gap; a thread's stack is a mapping far from there.
const MAIN_STACK_DEPTH_CHECKED: usize = 512 * 1024;

/// Hands back the main thread's stack pages below the caller's frame. A session's handshake runs deep in OpenSSL;
/// afterwards its relay polls from a few frames up, and the pages the handshake dirtied would otherwise stay
/// private to the session for as long as it is idle. A later call that goes deeper simply gets fresh zeroed pages.
/// Does nothing on any other thread's stack: below one may lie another mapping.
#[inline(never)]
pub fn release_unused_stack() {
    // SAFETY: getauxval only reads the auxiliary vector the kernel placed at the top of the main thread's stack.
    let stack_top = unsafe { libc::getauxval(libc::AT_RANDOM) } as usize;
    let page = page_size();
    let frame = std::hint::black_box(0u8);
    let frame_address = std::ptr::addr_of!(frame) as usize;
    let depth = stack_top.wrapping_sub(frame_address);
    if stack_top == 0 || depth > MAIN_STACK_DEPTH_CHECKED {
        return;
    }
    // This frame's page and the one below stay: they hold this call's frame, the red zone and madvise's own frame.
    let keep_from = (frame_address & !(page - 1)) - page;
    // madvise skips what is not mapped yet (man 2 madvise: Linux applies the advice to the mapped parts and returns
    // ENOMEM, the expected result here).
    // SAFETY: the range lies below every live frame of the main thread, in the gap only its stack may use.
    unsafe {
        libc::madvise(
            (keep_from - UNUSED_STACK_REACH) as *mut libc::c_void,
            UNUSED_STACK_REACH,
            libc::MADV_DONTNEED,
        );
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The result of fork, as seen by each side.
pub enum Forked {
    Child,
    /// The parent, with the child's process id.
    Parent(libc::pid_t),
}

/// Forks the (single-threaded) process.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: sslwrap's daemon parent is single-threaded, so the child may keep running Rust code after fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent(child)),
    }
}

/// Ends the process at once, without running exit handlers shared with the parent (forked children use this).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// A descriptor that becomes readable when the process `pid` (a child not yet reaped, so the number cannot have
/// been reused) exits: poll(2) on it waits for the exit without a signal handler and without polling in a loop.
pub fn process_exit_watch(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process a pidfd refers to (pidfd_send_signal): unlike a process number, a pidfd can never
/// name another process once its own has been reaped.
pub fn signal_process(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes the descriptor (kept open by the borrow), the signal number, a null siginfo
    // (meaning "as kill(2) would") and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to a child process by number; the caller guarantees the child is not reaped yet, so the number is
/// still its own.
pub fn signal_child(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers; the caller's guarantee means `pid` names our own child.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// Makes the program `command` starts inherit no descriptor but its stdin, stdout and stderr, as inetd does for the
/// programs it starts: whatever sslwrap itself inherited (a descriptor a shell left open on a secret file) or opened
/// without close-on-exec stays out of it. The descriptors are marked close-on-exec rather than closed, so the
/// channel on which std reports a failed exec keeps working.
pub fn inherit_only_stdio(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and makes only async-signal-safe system calls
    // (close_range, or getrlimit and fcntl where close_range is missing); it touches no memory but its locals.
    unsafe {
        command.pre_exec(|| {
            let marked = libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if marked == 0 {
                return Ok(());
            }
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            let highest = limit.rlim_cur.min(1 << 20) as RawFd;
            for fd in 3..highest {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Gives SIGCHLD its default disposition. A process started with SIGCHLD ignored (an inetd or shell may leave it so)
/// has its children reaped by the kernel itself, so no exit status of a session process or `-exec` program could be
/// read, and a pidfd would report an exit whose status is lost.
pub fn restore_default_child_signal() {
    // SAFETY: setting the disposition of SIGCHLD to SIG_DFL installs no handler and touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

/// Closes every descriptor above 2 except those in `keep` (sorted or not): what the process that started sslwrap
/// left open (a descriptor a shell holds on a secret file, say) must not stay open in a process that parses what
/// clients send. Call before anything of sslwrap's own is opened.
pub fn close_inherited_descriptors(keep: &[RawFd]) {
    let mut kept: Vec<libc::c_uint> = keep
        .iter()
        .filter_map(|&fd| libc::c_uint::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut first: libc::c_uint = 3;
    for fd in kept.into_iter().chain([libc::c_uint::MAX]) {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd.saturating_add(1);
    }
}

/// Closes descriptors `first..=last`; where close_range(2) is missing (Linux before 5.9), one at a time up to the
/// descriptor limit.
fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range takes plain integers; nothing of ours is open yet in the range (see the caller).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if closed == 0 {
        return;
    }
    // SAFETY: getrlimit writes the local only.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let highest = libc::c_uint::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20);
    for fd in first..=last.min(highest) {
        // SAFETY: closing a descriptor number nothing of ours uses; EBADF for an unopened one is harmless.
        unsafe {
            libc::close(fd as RawFd);
        }
    }
}

/// How a reaped child ended.
pub enum ChildEnd {
    Exited(i32),
    Killed(i32),
}

/// Reaps one ended child without waiting; `None` when no child has ended (or there are none).
pub fn reap_one_child() -> Option<(libc::pid_t, ChildEnd)> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into our local variable only.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    Some((pid, child_end(status)))
}

/// Waits for the child `pid` to end and reaps it.
pub fn wait_for_child(pid: libc::pid_t) -> io::Result<ChildEnd> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into our local variable only.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(child_end(status))
}

/// How a child ended, from its wait status.
fn child_end(status: libc::c_int) -> ChildEnd {
    if libc::WIFSIGNALED(status) {
        ChildEnd::Killed(libc::WTERMSIG(status))
    } else {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    }
}

/// Whether seccomp(2) can install a filter whose action kills the whole process: Ok, or the kernel's refusal (ENOSYS
/// without seccomp(2), EOPNOTSUPP before Linux 4.14).
pub fn seccomp_kill_process_available() -> io::Result<()> {
    let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 action through the pointer, which points at a local that
    // outlives the call; it changes nothing.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces the process with the program at `path` (no arguments, the same environment) by execv(2) itself, with
/// nothing before it: the seccomp tests must see execve, not the calls std makes before it. Returns only on failure.
#[cfg(test)]
pub fn execute_in_place(path: &CStr) -> io::Error {
    let arguments = [path.as_ptr(), std::ptr::null()];
    // SAFETY: `path` is a valid C string borrowed for the call, and `arguments` is a null-terminated array of valid
    // C string pointers that outlives it; execv only returns on failure.
    unsafe { libc::execv(path.as_ptr(), arguments.as_ptr()) };
    io::Error::last_os_error()
}

/// Confines every thread of the calling process with a classic BPF seccomp filter, for the rest of its life and that
/// of any process it forks: first no_new_privs (which an unprivileged process needs for a filter, and which keeps a
/// set-user-ID program it could run from gaining privileges), then the filter with TSYNC, so that a thread started
/// earlier (the -exec program's stderr reader) is confined too.
pub fn install_seccomp_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let length = libc::c_ushort::try_from(program.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let description = libc::sock_fprog {
        len: length,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and only sets a flag of this process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // SAFETY: the kernel copies `len` instructions from `filter`, which points into the borrowed slice of exactly
    // that length, during the call; it never writes through the pointer (the cast to *mut is the C API's).
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &description as *const libc::sock_fprog,
        )
    };
    match result {
        0 => Ok(()),
        // TSYNC names the thread that could not be synchronised instead of failing with an errno.
        thread if thread > 0 => Err(io::Error::other(format!(
            "thread {thread} could not be confined with the others"
        ))),
        _ => Err(io::Error::last_os_error()),
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; zeroed memory is a valid start for it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the signals and returns a descriptor on which they arrive instead (signalfd), so the daemon's one poll loop
/// sees them without handlers or races.
pub fn signals_to_fd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = signal_set(signals);
    // SAFETY: `set` is an initialised sigset_t; sigprocmask and signalfd only read it.
    unsafe {
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = check(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unblocks every signal again (a forked child serving one session wants default signal behaviour).
pub fn unblock_all_signals() {
    let set = signal_set(&[]);
    // SAFETY: `set` is an initialised empty sigset_t; SIG_SETMASK to it unblocks everything.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Reads the pending signal numbers from a signalfd (non-blocking; empty when none).
pub fn read_signals(fd: BorrowedFd<'_>) -> Vec<libc::c_int> {
    let mut signals = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain old data; zeroed is a valid value to read into.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: we pass a pointer to `info` and exactly its size; read writes at most that many bytes.
        let got = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if got != size as isize {
            return signals;
        }
        signals.push(info.ssi_signo as libc::c_int);
    }
}

/// A user from the password database.
pub struct UserEntry {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks a user up by name (through NSS, as the system does).
pub fn user_by_name(name: &str) -> io::Result<Option<UserEntry>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buffer = vec![0u8; 16384];
    // SAFETY: passwd is plain old data; zeroed is valid before getpwnam_r fills it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the whole call, and the buffer length is passed with it.
    let error = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    if found.is_null() {
        return Ok(None);
    }
    Ok(Some(UserEntry {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }))
}

/// Looks a group id up by name.
pub fn group_by_name(name: &str) -> io::Result<Option<libc::gid_t>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buffer = vec![0u8; 65536];
    // SAFETY: group is plain old data; zeroed is valid before getgrnam_r fills it.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the whole call, and the buffer length is passed with it.
    let error = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok((!found.is_null()).then_some(entry.gr_gid))
}

/// Sets the supplementary groups, then the gid, then the uid: the order in which a root process can still do each.
pub fn switch_identity(
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    groups: &[libc::gid_t],
) -> io::Result<()> {
    // SAFETY: setgroups reads `groups.len()` gids from the slice; setgid/setuid take plain integers.
    unsafe {
        if gid.is_some() || uid.is_some() {
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        }
        if let Some(gid) = gid {
            check(libc::setgid(gid))?;
        }
        if let Some(uid) = uid {
            check(libc::setuid(uid))?;
        }
    }
    Ok(())
}

/// The real, effective and saved uid and gid, to prove a privilege drop took.
pub fn current_ids() -> ([libc::uid_t; 3], [libc::gid_t; 3]) {
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write into the six local integers only.
    unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid);
        libc::getresgid(&mut rgid, &mut egid, &mut sgid);
    }
    ([ruid, euid, suid], [rgid, egid, sgid])
}

/// Turns on OpenSSL's automatic Diffie-Hellman group choice (RFC 7919 groups sized to the certificate), which the
/// `openssl` crate does not expose.
pub fn enable_automatic_dh(context: &mut openssl::ssl::SslContextBuilder) {
    // SAFETY: the builder owns a valid SSL_CTX; SSL_CTRL_SET_DH_AUTO takes an integer flag and no pointer.
    unsafe {
        openssl_sys::SSL_CTX_set_dh_auto(context.as_ptr(), 1);
    }
}

/// Installs a handshake-state callback that hands each state change to `report` (for `-state`).
pub fn report_handshake_states(
    context: &mut openssl::ssl::SslContextBuilder,
    report: fn(&str, &str),
) {
    STATE_REPORTER.store(report as *mut (), std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the builder owns a valid SSL_CTX; the callback is a plain extern "C" fn that lives for the whole program.
    unsafe {
        SSL_CTX_set_info_callback(context.as_ptr(), Some(handshake_state_changed));
    }
}

// Values of OpenSSL's SSL_CB_* flags (ssl.h), which openssl-sys does not export.
const SSL_CB_LOOP: libc::c_int = 0x01;
const SSL_CB_HANDSHAKE_START: libc::c_int = 0x10;
const SSL_CB_HANDSHAKE_DONE: libc::c_int = 0x20;
const SSL_CB_ALERT: libc::c_int = 0x4000;

static STATE_REPORTER: std::sync::atomic::AtomicPtr<()> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

// SAFETY: a type only: the signature SSL_CTX_set_info_callback expects of its callback.
type InfoCallback = unsafe extern "C" fn(*const openssl_sys::SSL, libc::c_int, libc::c_int);

// SAFETY: these declarations match the prototypes in OpenSSL 3's <openssl/ssl.h>.
unsafe extern "C" {
    fn SSL_CTX_set_info_callback(ctx: *mut openssl_sys::SSL_CTX, callback: Option<InfoCallback>);
    fn SSL_alert_desc_string_long(value: libc::c_int) -> *const libc::c_char;
}

// SAFETY: only OpenSSL calls it, as the info callback, with a live SSL and plain integers.
unsafe extern "C" fn handshake_state_changed(
    ssl: *const openssl_sys::SSL,
    kind: libc::c_int,
    value: libc::c_int,
) {
    let reporter = STATE_REPORTER.load(std::sync::atomic::Ordering::Relaxed);
    if reporter.is_null() {
        return;
    }
    let report: fn(&str, &str) =
        // SAFETY: STATE_REPORTER only ever holds a `fn(&str, &str)` stored by report_handshake_states.
        unsafe { std::mem::transmute::<*mut (), fn(&str, &str)>(reporter) };
    let what = match kind {
        k if k & SSL_CB_ALERT != 0 => "alert",
        k if k & SSL_CB_HANDSHAKE_START != 0 => "handshake start",
        k if k & SSL_CB_HANDSHAKE_DONE != 0 => "handshake done",
        k if k & SSL_CB_LOOP != 0 => "state",
        _ => return,
    };
    // SAFETY: OpenSSL calls us with a valid SSL; both functions return static NUL-terminated strings.
    let detail = unsafe {
        let text = if what == "alert" {
            SSL_alert_desc_string_long(value)
        } else {
            openssl_sys::SSL_state_string_long(ssl)
        };
        if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    report(what, &detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_flag_is_set_once_and_seen_by_a_forked_process() {
        let flag = SharedFlag::new().unwrap();
        assert!(!flag.set());
        assert!(flag.set());
        let other = SharedFlag::new().unwrap();
        // The child only sets the flag and leaves with _exit: no lock or allocation after fork.
        match fork().unwrap() {
            Forked::Child => {
                other.set();
                exit_now(0)
            }
            Forked::Parent(pid) => {
                wait_for_child(pid).unwrap();
                assert!(other.set(), "the child's setting is not seen");
            }
        }
    }

    #[test]
    fn read_line_takes_the_first_line_only_and_tells_empty_input_apart() {
        let mut input: &[u8] = b"first\nsecond\n";
        let line = Secret::read_line(&mut input, 64).unwrap().unwrap();
        assert_eq!(&*line, b"first");
        assert_eq!(input, b"second\n", "more than the line was taken");
        assert_eq!(&*Secret::read_line(&b"\n"[..], 64).unwrap().unwrap(), b"");
        assert_eq!(
            &*Secret::read_line(&b"last"[..], 64).unwrap().unwrap(),
            b"last"
        );
        assert!(Secret::read_line(&b""[..], 64).unwrap().is_none());
        assert_eq!(
            Secret::read_line(&b"abcdef"[..], 4).unwrap().unwrap().len(),
            4
        );
    }

    #[test]
    fn an_encrypted_key_is_decrypted_with_its_pass_phrase_only() {
        use openssl::ec::{EcGroup, EcKey};
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = openssl::pkey::PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let cipher = openssl::symm::Cipher::aes_256_cbc();
        let pkcs8 = key
            .private_key_to_pem_pkcs8_passphrase(cipher, b"right")
            .unwrap();
        let traditional = key
            .ec_key()
            .unwrap()
            .private_key_to_pem_passphrase(cipher, b"right")
            .unwrap();
        for pem in [pkcs8, traditional] {
            assert!(decrypt_private_key(&pem, b"right").unwrap().public_eq(&key));
            // A wrong pass phrase is asked for again by OpenSSL's legacy reader: still an error, no panic.
            assert!(decrypt_private_key(&pem, b"wrong").is_err());
            assert!(decrypt_private_key(&pem, &[b'x'; 2000]).is_err());
        }
    }
}
