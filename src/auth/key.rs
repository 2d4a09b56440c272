//! The API key format: `keel_<key id>_<secret>`, the key id 16 lowercase hex characters (8 random
//! bytes, public: it names the key in lists, logs and revocations) and the secret 64 lowercase
//! hex characters (32 random bytes from the operating system's generator).
//!
//! Parsing is strict and total: any other text is an [`InvalidKey`] that says what is wrong
//! without echoing the input. `Debug` and `Display` of an [`ApiKey`] never show the secret; only
//! [`ApiKey::expose_secret`] does, for showing a new key once.

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "keel_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// Why a text is not an API key. Messages name the part that is wrong, never its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("the api key is empty")]
    Empty,
    #[error("an api key has only ASCII characters")]
    NotAscii,
    #[error("an api key starts with 'keel_'")]
    MissingPrefix,
    #[error("an api key is keel_<key id>_<secret>: found {0} parts after 'keel_' instead of 2")]
    Parts(usize),
    #[error("the key id is 16 lowercase hex characters, found {0} characters")]
    KeyIdLength(usize),
    #[error("the key id is 16 lowercase hex characters: it has another character")]
    KeyIdNotHex,
    #[error("the secret is 64 lowercase hex characters, found {0} characters")]
    SecretLength(usize),
    #[error("the secret is 64 lowercase hex characters: it has another character")]
    SecretNotHex,
}

/// The public half of a key: 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_BYTES]);

impl KeyId {
    /// Parses 16 lowercase hex characters.
    pub fn parse(text: &str) -> Result<Self, InvalidKey> {
        if !text.is_ascii() {
            return Err(InvalidKey::NotAscii);
        }
        if text.len() != 2 * KEY_ID_BYTES {
            return Err(InvalidKey::KeyIdLength(text.len()));
        }
        decode_hex(text).map(Self).ok_or(InvalidKey::KeyIdNotHex)
    }

    pub(super) fn as_bytes(&self) -> &[u8; KEY_ID_BYTES] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for KeyId {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A whole key, secret included. Shown once at creation ([`ApiKey::expose_secret`]); what keel
/// stores is an HMAC of it (see `super::secret`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: KeyId,
    secret: [u8; SECRET_BYTES],
}

impl ApiKey {
    /// A new key: 8 random bytes of key id and 32 of secret, from the operating system.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut id = [0; KEY_ID_BYTES];
        let mut secret = [0; SECRET_BYTES];
        getrandom::getrandom(&mut id)?;
        getrandom::getrandom(&mut secret)?;
        Ok(Self {
            id: KeyId(id),
            secret,
        })
    }

    /// Parses `keel_<key id>_<secret>`, exactly: no surrounding whitespace, no uppercase.
    pub fn parse(text: &str) -> Result<Self, InvalidKey> {
        if text.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if !text.is_ascii() {
            return Err(InvalidKey::NotAscii);
        }
        let rest = text.strip_prefix(PREFIX).ok_or(InvalidKey::MissingPrefix)?;
        let parts = rest.split('_').count();
        let Some((id, secret)) = rest.split_once('_').filter(|_| parts == 2) else {
            return Err(InvalidKey::Parts(parts));
        };
        let id = KeyId::parse(id)?;
        if secret.len() != 2 * SECRET_BYTES {
            return Err(InvalidKey::SecretLength(secret.len()));
        }
        let secret = decode_hex(secret).ok_or(InvalidKey::SecretNotHex)?;
        Ok(Self { id, secret })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(super) fn secret(&self) -> &[u8; SECRET_BYTES] {
        &self.secret
    }

    /// The whole key, `keel_<key id>_<secret>`: for the one time it is shown to its owner.
    pub fn expose_secret(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, encode_hex(&self.secret))
    }
}

impl fmt::Display for ApiKey {
    /// `keel_<key id>_***`: the secret is never displayed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_***", self.id)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

impl FromStr for ApiKey {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Lowercase hex of exactly `N` bytes; `None` for anything else (uppercase included).
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef";
    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_generated_key_has_the_documented_format_and_parses_back() {
        let key = ApiKey::generate().unwrap();
        let text = key.expose_secret();
        assert_eq!(text.len(), 5 + 16 + 1 + 64);
        let (id, secret) = text.strip_prefix("keel_").unwrap().split_once('_').unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(secret.len(), 64);
        assert!(format!("{id}{secret}")
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(ApiKey::parse(&text).unwrap(), key);
        assert_ne!(ApiKey::generate().unwrap(), key, "two keys differ");
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let key = ApiKey::parse(&format!("keel_{ID}_{SECRET}")).unwrap();
        let shown = format!("{key} {key:?} {:?}", Some(&key));
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(&SECRET[..8]), "{shown}");
        assert!(shown.contains(ID), "the key id is public: {shown}");
        assert_eq!(key.to_string(), format!("keel_{ID}_***"));
    }

    #[test]
    fn odd_inputs_are_refused_with_what_is_wrong() {
        let upper_id = ID.to_uppercase();
        let upper_secret = SECRET.to_uppercase();
        let cases: Vec<(String, InvalidKey)> = vec![
            (String::new(), InvalidKey::Empty),
            ("keel".into(), InvalidKey::MissingPrefix),
            (format!("KEEL_{ID}_{SECRET}"), InvalidKey::MissingPrefix),
            (format!("kafka_{ID}_{SECRET}"), InvalidKey::MissingPrefix),
            (format!(" keel_{ID}_{SECRET}"), InvalidKey::MissingPrefix),
            (
                format!("Bearer keel_{ID}_{SECRET}"),
                InvalidKey::MissingPrefix,
            ),
            ("keel_".into(), InvalidKey::Parts(1)),
            (format!("keel_{ID}{SECRET}"), InvalidKey::Parts(1)),
            (format!("keel_{ID}_{SECRET}_"), InvalidKey::Parts(3)),
            (format!("keel__{ID}_{SECRET}"), InvalidKey::Parts(3)),
            (format!("keel_{ID}__{SECRET}"), InvalidKey::Parts(3)),
            (format!("keel_{ID}_"), InvalidKey::SecretLength(0)),
            (format!("keel__{SECRET}"), InvalidKey::KeyIdLength(0)),
            (
                format!("keel_{}_{SECRET}", &ID[..15]),
                InvalidKey::KeyIdLength(15),
            ),
            (format!("keel_{ID}0_{SECRET}"), InvalidKey::KeyIdLength(17)),
            (format!("keel_{upper_id}_{SECRET}"), InvalidKey::KeyIdNotHex),
            (
                format!("keel_{}g_{SECRET}", &ID[..15]),
                InvalidKey::KeyIdNotHex,
            ),
            (
                format!("keel_{ID}_{upper_secret}"),
                InvalidKey::SecretNotHex,
            ),
            (
                format!("keel_{ID}_{}", &SECRET[..63]),
                InvalidKey::SecretLength(63),
            ),
            (format!("keel_{ID}_{SECRET}0"), InvalidKey::SecretLength(65)),
            (
                format!("keel_{ID}_{SECRET}\n"),
                InvalidKey::SecretLength(65),
            ),
            (
                format!("keel_{ID}_{}+", &SECRET[..63]),
                InvalidKey::SecretNotHex,
            ),
            (
                format!("keel_{ID}_{}", &SECRET[..62]) + "é",
                InvalidKey::NotAscii,
            ),
            (
                format!("keel_{}é_{SECRET}", &ID[..14]),
                InvalidKey::NotAscii,
            ),
            ("keel_\u{0}".into(), InvalidKey::Parts(1)),
        ];
        for (text, expected) in cases {
            let err = ApiKey::parse(&text).unwrap_err();
            assert_eq!(err, expected, "{text:?}");
            let message = err.to_string();
            assert!(
                !message.contains(SECRET) && !message.contains(ID),
                "{message}"
            );
        }
    }

    #[test]
    fn no_input_makes_the_parser_panic() {
        // Every short string over a small alphabet that covers the format's edges, and cut-offs
        // of a valid key at each byte (including inside a multi-byte character).
        let alphabet = ["k", "e", "l", "_", "0", "f", "G", "é", "\u{0}"];
        let mut texts = vec![String::new()];
        for _ in 0..4 {
            texts = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .chain(texts.iter().cloned())
                .collect();
        }
        let valid = format!("keel_{ID}_é{SECRET}");
        texts.extend((0..valid.len()).filter_map(|i| valid.get(..i).map(String::from)));
        for text in texts {
            assert!(ApiKey::parse(&text).is_err(), "{text:?}");
        }
        assert!(ApiKey::parse(&format!("keel_{ID}_{SECRET}")).is_ok());
    }

    #[test]
    fn a_key_id_parses_alone_for_revocation() {
        let id = KeyId::parse(ID).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(
            KeyId::parse(&ID.to_uppercase()),
            Err(InvalidKey::KeyIdNotHex)
        );
        assert_eq!(KeyId::parse(""), Err(InvalidKey::KeyIdLength(0)));
    }
}
