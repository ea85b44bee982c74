//! The `-ticketkey` files: session ticket keys in nginx's `ssl_session_ticket_key` layout, so that the rotation tools
//! written for nginx work unchanged, and several processes or hosts given the same files resume each other's sessions.
//! tls.rs reads the files and hands the keys to sys.rs, whose ticket callback asks this file which key seals a new
//! ticket and which one opens a ticket shown. It must never copy key bytes out of their wiped buffers, and never do
//! any cryptography itself: OpenSSL does it all.

use openssl::symm::Cipher;

use crate::sys::Secret;

/// The length of a key name, the first 16 bytes of every key file and of every ticket it seals.
pub const KEY_NAME_BYTES: usize = 16;

/// The file lengths nginx accepts: 48 bytes (AES-128-CBC) and 80 bytes (AES-256-CBC), HMAC-SHA256 in both.
pub const KEY_FILE_LENGTHS: [usize; 2] = [48, 80];

/// One key file, as read: the bytes stay in the one wiped buffer they were read into.
pub struct TicketKey {
    bytes: Secret,
}

impl TicketKey {
    /// The key in a file of `bytes`; an error (with the length found) unless it holds exactly 48 or 80 bytes.
    pub fn from_file_bytes(bytes: Secret) -> Result<TicketKey, usize> {
        if KEY_FILE_LENGTHS.contains(&bytes.len()) {
            Ok(TicketKey { bytes })
        } else {
            Err(bytes.len())
        }
    }

    /// The 16-byte name written in clear into each ticket, by which the key that sealed it is found again.
    pub fn name(&self) -> &[u8] {
        &self.bytes[..KEY_NAME_BYTES]
    }

    fn is_aes_256(&self) -> bool {
        self.bytes.len() == 80
    }

    /// nginx's layout (ngx_ssl_session_ticket_keys): 48 bytes are name, AES key, HMAC secret, 16 bytes each;
    /// 80 bytes are name (16), HMAC secret (32), AES key (32).
    pub fn aes_key(&self) -> &[u8] {
        if self.is_aes_256() {
            &self.bytes[48..80]
        } else {
            &self.bytes[16..32]
        }
    }

    /// The HMAC-SHA256 secret that authenticates the ticket (see aes_key for where it lies).
    pub fn hmac_secret(&self) -> &[u8] {
        if self.is_aes_256() {
            &self.bytes[16..48]
        } else {
            &self.bytes[32..48]
        }
    }

    /// AES-256-CBC for an 80-byte file, AES-128-CBC for a 48-byte one.
    pub fn cipher(&self) -> Cipher {
        if self.is_aes_256() {
            Cipher::aes_256_cbc()
        } else {
            Cipher::aes_128_cbc()
        }
    }
}

/// The keys in command-line order: the first seals every new ticket, each of them opens tickets it sealed.
pub struct TicketKeys(Vec<TicketKey>);

/// Which key opens a ticket shown by a client.
pub enum Opening<'a> {
    /// The first key: the ticket is current.
    Current(&'a TicketKey),
    /// An older key: the ticket is still good, but the client should get a new one sealed with the first key.
    Previous(&'a TicketKey),
}

impl TicketKeys {
    /// The keys, None for an empty list.
    pub fn new(keys: Vec<TicketKey>) -> Option<TicketKeys> {
        (!keys.is_empty()).then_some(TicketKeys(keys))
    }

    /// The key that seals new tickets.
    pub fn sealing(&self) -> &TicketKey {
        // `new` refuses an empty list, so there is always a first key.
        &self.0[0]
    }

    /// The key whose name a ticket carries, if it is one of ours.
    pub fn opening(&self, name: &[u8]) -> Option<Opening<'_>> {
        let position = self.0.iter().position(|key| key.name() == name)?;
        let key = &self.0[position];
        Some(if position == 0 {
            Opening::Current(key)
        } else {
            Opening::Previous(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> TicketKey {
        TicketKey::from_file_bytes(Secret::read_at_most(bytes, bytes.len()).unwrap()).unwrap()
    }

    fn counting(length: u8) -> Vec<u8> {
        (0..length).collect()
    }

    #[test]
    fn a_48_byte_file_is_name_aes_key_hmac_secret() {
        let key = key(&counting(48));
        assert_eq!(key.name(), &counting(48)[..16]);
        assert_eq!(key.aes_key(), &counting(48)[16..32]);
        assert_eq!(key.hmac_secret(), &counting(48)[32..48]);
        assert_eq!(key.cipher().nid(), Cipher::aes_128_cbc().nid());
    }

    #[test]
    fn an_80_byte_file_is_name_hmac_secret_aes_key() {
        let key = key(&counting(80));
        assert_eq!(key.name(), &counting(80)[..16]);
        assert_eq!(key.hmac_secret(), &counting(80)[16..48]);
        assert_eq!(key.aes_key(), &counting(80)[48..80]);
        assert_eq!(key.cipher().nid(), Cipher::aes_256_cbc().nid());
    }

    #[test]
    fn other_lengths_are_refused_with_the_length() {
        for length in [0, 47, 49, 79, 81] {
            let bytes = vec![7; length];
            let secret = Secret::read_at_most(bytes.as_slice(), length).unwrap();
            assert_eq!(TicketKey::from_file_bytes(secret).err(), Some(length));
        }
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let (first, second) = (vec![1; 80], vec![2; 48]);
        let keys = TicketKeys::new(vec![key(&first), key(&second)]).unwrap();
        assert_eq!(keys.sealing().name(), &first[..16]);
        assert!(matches!(
            keys.opening(&first[..16]),
            Some(Opening::Current(_))
        ));
        assert!(
            matches!(keys.opening(&second[..16]), Some(Opening::Previous(key)) if key.name() == &second[..16])
        );
        assert!(keys.opening(&[3; 16]).is_none());
        assert!(TicketKeys::new(Vec::new()).is_none());
    }
}
