//! Message content encryption at rest: AES-256-GCM, with key rotation.
//!
//! Stored form (`room_message.content`, bytea): `0xFC 0x01 || key id (4 bytes) || nonce (12) ||
//! ciphertext || tag (16)`. The key id is a check value of the key (the first 4 bytes of its
//! GCM tag over nothing), so keys need no names: the service encrypts with its current key
//! (`CHAT_ENCRYPTION_KEY`) and decrypts with whichever configured key the id names
//! (`CHAT_ENCRYPTION_KEYS_PREVIOUS` holds the retired ones until `chat-service reencrypt` has
//! moved everything to the current key). Content written before key ids existed
//! (`nonce || ciphertext || tag`) is still read: every configured key is tried on it.
//!
//! Every message gets a fresh random 96-bit nonce. The room id and message id are bound in as
//! associated data, so a ciphertext copied onto another message or room fails to decrypt
//! instead of showing up there; both ids survive a copy to ScyllaDB unchanged.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::ids::{MessageId, RoomId};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// The first bytes of content sealed with a key id (format 1).
const MAGIC: [u8; 2] = [0xFC, 0x01];
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN;

/// Which key sealed a value: a check value of the key, never the key itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "CHAT_ENCRYPTION_KEY is not set: set it to 32 random bytes in base64, e.g. `openssl rand -base64 32`"
    )]
    Missing,
    #[error(
        "CHAT_ENCRYPTION_KEY is not valid base64 ({0}): make one with `openssl rand -base64 32`"
    )]
    NotBase64(String),
    #[error(
        "CHAT_ENCRYPTION_KEY decodes to {0} bytes, AES-256 needs exactly 32: make one with `openssl rand -base64 32`"
    )]
    WrongLength(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "stored content is {0} bytes, shorter than a nonce and tag: it was not written by chat-service"
    )]
    TooShort(usize),
    #[error("stored content failed authentication: wrong key, or the data was altered or moved")]
    Authentication,
    #[error("decrypted content is not UTF-8")]
    NotUtf8,
    #[error("encryption failed")]
    Encrypt,
    #[error(
        "stored content was sealed with key {0}, which is not configured: add that key to CHAT_ENCRYPTION_KEYS_PREVIOUS"
    )]
    UnknownKey(KeyId),
}

/// The AES-256 key (from `CHAT_ENCRYPTION_KEY`), kept out of `Debug` output.
#[derive(Clone)]
pub struct EncryptionKey([u8; KEY_LEN]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl EncryptionKey {
    /// Parses the base64 text of `CHAT_ENCRYPTION_KEY` (`None`: the variable is not set).
    pub fn from_base64(text: Option<&str>) -> Result<Self, KeyError> {
        let text = text
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(KeyError::Missing)?;
        let bytes = BASE64
            .decode(text)
            .map_err(|e| KeyError::NotBase64(e.to_string()))?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(EncryptionKey(key))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        EncryptionKey(bytes)
    }

    /// A fresh random key (tests, local runs).
    pub fn random() -> Self {
        EncryptionKey(rand::random())
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

/// Seals with the current key; opens with any configured key.
#[derive(Clone)]
pub struct ContentCipher {
    /// The current key first, then the previous ones.
    keys: Vec<(KeyId, Aes256Gcm)>,
}

impl std::fmt::Debug for ContentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentCipher(AES-256-GCM)")
    }
}

/// Associated data: the ids the ciphertext belongs to.
fn aad(room: RoomId, message: MessageId) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(room.0.as_bytes());
    aad[16..].copy_from_slice(message.0.as_bytes());
    aad
}

/// The key's check value: its GCM tag over nothing, under a fixed nonce and label. Only this
/// one value is ever made under that nonce, so it tells no more than a check value does.
fn key_id(aead: &Aes256Gcm) -> KeyId {
    let tag = aead
        .encrypt(
            &Nonce::from([0u8; NONCE_LEN]),
            Payload {
                msg: &[],
                aad: b"ficus chat key id",
            },
        )
        .unwrap_or_default();
    let mut id = [0u8; KEY_ID_LEN];
    for (i, b) in tag.iter().take(KEY_ID_LEN).enumerate() {
        id[i] = *b;
    }
    KeyId(id)
}

/// `nonce || ciphertext || tag` opened with `aead`.
fn open_with(aead: &Aes256Gcm, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::TooShort(body.len()));
    }
    let (nonce_bytes, ciphertext) = body.split_at(NONCE_LEN);
    let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes
        .try_into()
        .map_err(|_| CryptoError::TooShort(body.len()))?;
    aead.decrypt(
        &Nonce::from(nonce_bytes),
        Payload {
            msg: ciphertext,
            aad,
        },
    )
    .map_err(|_| CryptoError::Authentication)
}

impl ContentCipher {
    /// One key: seals and opens with it.
    pub fn new(key: &EncryptionKey) -> Self {
        Self::with_previous(key, &[])
    }

    /// Seals with `current`; opens with it or any of `previous` (keys being retired).
    pub fn with_previous(current: &EncryptionKey, previous: &[EncryptionKey]) -> Self {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|k| {
                let aead = Aes256Gcm::new(&k.0.into());
                (key_id(&aead), aead)
            })
            .collect();
        ContentCipher { keys }
    }

    /// The id of the key new content is sealed with.
    pub fn current_key(&self) -> KeyId {
        self.keys[0].0
    }

    /// The key `sealed` names, if it carries one (content sealed before key ids has none).
    pub fn key_of(sealed: &[u8]) -> Option<KeyId> {
        if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || sealed[..MAGIC.len()] != MAGIC {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&sealed[MAGIC.len()..HEADER_LEN]);
        Some(KeyId(id))
    }

    /// Whether `sealed` is not under the current key (`reencrypt` rewrites it).
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        Self::key_of(sealed) != Some(self.current_key())
    }

    /// `0xFC 0x01 || key id || nonce || ciphertext || tag` for message `message` of room `room`,
    /// under the current key.
    pub fn seal(
        &self,
        room: RoomId,
        message: MessageId,
        plaintext: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        let (id, aead) = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ciphertext = aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad(room, message),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&MAGIC);
        sealed.extend_from_slice(&id.0);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The plaintext of a value made by [`seal`](Self::seal) for the same ids, with the key it
    /// names; content without a key id is tried with every configured key.
    pub fn open(
        &self,
        room: RoomId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        let aad = aad(room, message);
        let plaintext = match Self::key_of(sealed) {
            Some(id) => match self.keys.iter().find(|(k, _)| *k == id) {
                Some((_, aead)) => open_with(aead, &aad, &sealed[HEADER_LEN..]),
                None => Err(CryptoError::UnknownKey(id)),
            },
            None => Err(CryptoError::Authentication),
        }
        // Without a key id (or, once in 2^16, an old value that happens to start like one).
        .or_else(|keyed| {
            if sealed.len() < NONCE_LEN + TAG_LEN {
                return Err(CryptoError::TooShort(sealed.len()));
            }
            self.keys
                .iter()
                .find_map(|(_, aead)| open_with(aead, &aad, sealed).ok())
                .ok_or(match keyed {
                    CryptoError::UnknownKey(id) => CryptoError::UnknownKey(id),
                    _ => CryptoError::Authentication,
                })
        })?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::NotUtf8)
    }

    /// `sealed` opened with whichever key it needs and sealed again with the current one.
    pub fn reseal(
        &self,
        room: RoomId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let plaintext = self.open(room, message, sealed)?;
        self.seal(room, message, &plaintext)
    }
}

/// Serde for sealed bytes as base64 text (event payloads on NATS carry sealed content).
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::BASE64;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageIdGenerator;

    fn ids() -> (RoomId, MessageId) {
        (RoomId::random(), MessageIdGenerator::default().next())
    }

    #[test]
    fn round_trip() {
        let cipher = ContentCipher::new(&EncryptionKey::random());
        let (room, msg) = ids();
        for text in ["", "hola", "ünïcødé 👍", &"x".repeat(4096)] {
            let sealed = cipher.seal(room, msg, text).expect("seal");
            assert_eq!(sealed.len(), HEADER_LEN + NONCE_LEN + text.len() + TAG_LEN);
            assert_eq!(cipher.open(room, msg, &sealed).expect("open"), text);
        }
    }

    #[test]
    fn nonces_are_fresh_and_plaintext_is_hidden() {
        let cipher = ContentCipher::new(&EncryptionKey::random());
        let (room, msg) = ids();
        let a = cipher.seal(room, msg, "secret words").expect("seal");
        let b = cipher.seal(room, msg, "secret words").expect("seal");
        assert_ne!(
            a[HEADER_LEN..HEADER_LEN + NONCE_LEN],
            b[HEADER_LEN..HEADER_LEN + NONCE_LEN],
            "a new nonce per message"
        );
        assert_ne!(a, b);
        assert!(
            !a.windows(6).any(|w| w == b"secret"),
            "plaintext visible in the sealed bytes"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let cipher = ContentCipher::new(&EncryptionKey::random());
        let (room, msg) = ids();
        let sealed = cipher.seal(room, msg, "pay 10 euros").expect("seal");
        for i in [HEADER_LEN, HEADER_LEN + NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                cipher.open(room, msg, &bad),
                Err(CryptoError::Authentication),
                "flipped byte {i}"
            );
        }
        assert_eq!(
            cipher.open(room, msg, &sealed[..sealed.len() - 1]),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            cipher.open(room, msg, &sealed[..10]),
            Err(CryptoError::TooShort(10))
        );
    }

    #[test]
    fn content_is_bound_to_its_room_and_message() {
        let cipher = ContentCipher::new(&EncryptionKey::random());
        let (room, msg) = ids();
        let sealed = cipher.seal(room, msg, "hello").expect("seal");
        let (other_room, other_msg) = ids();
        assert_eq!(
            cipher.open(other_room, msg, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            cipher.open(room, other_msg, &sealed),
            Err(CryptoError::Authentication)
        );
    }

    /// Content sealed the old way: `nonce || ciphertext || tag`, no key id.
    fn seal_unkeyed(key: &EncryptionKey, room: RoomId, msg: MessageId, text: &str) -> Vec<u8> {
        let aead = Aes256Gcm::new(&key.0.into());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = nonce.to_vec();
        sealed.extend(
            aead.encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: text.as_bytes(),
                    aad: &aad(room, msg),
                },
            )
            .expect("encrypt"),
        );
        sealed
    }

    #[test]
    fn rotation_reads_every_configured_key_and_writes_with_the_current_one() {
        let (old, new) = (EncryptionKey::random(), EncryptionKey::random());
        let (room, msg) = ids();
        let before = ContentCipher::new(&old);
        let sealed_old = before.seal(room, msg, "written before").expect("seal");
        let unkeyed = seal_unkeyed(&old, room, msg, "written before key ids");

        let rotated = ContentCipher::with_previous(&new, std::slice::from_ref(&old));
        assert_ne!(rotated.current_key(), before.current_key());
        assert_eq!(
            ContentCipher::key_of(&sealed_old),
            Some(before.current_key())
        );
        assert_eq!(ContentCipher::key_of(&unkeyed), None);
        assert_eq!(
            rotated.open(room, msg, &sealed_old).expect("old key"),
            "written before"
        );
        assert_eq!(
            rotated.open(room, msg, &unkeyed).expect("old format"),
            "written before key ids"
        );
        assert!(rotated.is_stale(&sealed_old) && rotated.is_stale(&unkeyed));
        let resealed = rotated.reseal(room, msg, &sealed_old).expect("reseal");
        assert!(!rotated.is_stale(&resealed));
        assert_eq!(
            ContentCipher::new(&new)
                .open(room, msg, &resealed)
                .expect("the new key alone reads it"),
            "written before"
        );
        // A key taken away too early: the error names the missing key and the fix.
        let err = ContentCipher::new(&new)
            .open(room, msg, &sealed_old)
            .expect_err("old key gone");
        assert_eq!(err, CryptoError::UnknownKey(before.current_key()));
        assert!(err.to_string().contains("CHAT_ENCRYPTION_KEYS_PREVIOUS"));
    }

    #[test]
    fn wrong_key_fails() {
        let (room, msg) = ids();
        let sealer = ContentCipher::new(&EncryptionKey::random());
        let sealed = sealer.seal(room, msg, "hello").expect("seal");
        let other = ContentCipher::new(&EncryptionKey::random());
        assert_eq!(
            other.open(room, msg, &sealed),
            Err(CryptoError::UnknownKey(sealer.current_key())),
            "the sealing key is named"
        );
    }

    #[test]
    fn key_parsing_names_the_variable_and_the_fix() {
        let good = EncryptionKey::random().to_base64();
        assert!(EncryptionKey::from_base64(Some(&good)).is_ok());
        assert!(
            EncryptionKey::from_base64(Some(&format!("  {good}\n"))).is_ok(),
            "surrounding whitespace is ignored"
        );
        assert_eq!(
            EncryptionKey::from_base64(None).err(),
            Some(KeyError::Missing)
        );
        assert_eq!(
            EncryptionKey::from_base64(Some(" ")).err(),
            Some(KeyError::Missing)
        );
        assert_eq!(
            EncryptionKey::from_base64(Some(&BASE64.encode([7u8; 16]))).err(),
            Some(KeyError::WrongLength(16))
        );
        assert!(matches!(
            EncryptionKey::from_base64(Some("not base64!")),
            Err(KeyError::NotBase64(_))
        ));
        for err in [
            KeyError::Missing,
            KeyError::WrongLength(16),
            KeyError::NotBase64("x".into()),
        ] {
            let text = err.to_string();
            assert!(
                text.contains("CHAT_ENCRYPTION_KEY") && text.contains("openssl rand -base64 32"),
                "{text}"
            );
        }
    }
}
