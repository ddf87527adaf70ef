//! Message content encryption at rest: AES-256-GCM.
//!
//! Stored form (`room_message.content`, bytea): `nonce (12 bytes) || ciphertext || tag (16)`.
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

/// Seals and opens message content.
#[derive(Clone)]
pub struct ContentCipher {
    aead: Aes256Gcm,
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

impl ContentCipher {
    pub fn new(key: &EncryptionKey) -> Self {
        ContentCipher {
            aead: Aes256Gcm::new(&key.0.into()),
        }
    }

    /// `nonce || ciphertext || tag` for message `message` of room `room`.
    pub fn seal(
        &self,
        room: RoomId,
        message: MessageId,
        plaintext: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad(room, message),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The plaintext of a value made by [`seal`](Self::seal) for the same ids and key.
    pub fn open(
        &self,
        room: RoomId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes
            .try_into()
            .map_err(|_| CryptoError::TooShort(sealed.len()))?;
        let plaintext = self
            .aead
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: ciphertext,
                    aad: &aad(room, message),
                },
            )
            .map_err(|_| CryptoError::Authentication)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::NotUtf8)
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
            assert_eq!(sealed.len(), NONCE_LEN + text.len() + TAG_LEN);
            assert_eq!(cipher.open(room, msg, &sealed).expect("open"), text);
        }
    }

    #[test]
    fn nonces_are_fresh_and_plaintext_is_hidden() {
        let cipher = ContentCipher::new(&EncryptionKey::random());
        let (room, msg) = ids();
        let a = cipher.seal(room, msg, "secret words").expect("seal");
        let b = cipher.seal(room, msg, "secret words").expect("seal");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN], "a new nonce per message");
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
        for i in [0, NONCE_LEN, sealed.len() - 1] {
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

    #[test]
    fn wrong_key_fails() {
        let (room, msg) = ids();
        let sealed = ContentCipher::new(&EncryptionKey::random())
            .seal(room, msg, "hello")
            .expect("seal");
        let other = ContentCipher::new(&EncryptionKey::random());
        assert_eq!(
            other.open(room, msg, &sealed),
            Err(CryptoError::Authentication)
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
