//! Ed25519 keys in OpenSSH's formats: the `ssh-ed25519 AAAA...` public line (RFC 8709's blob)
//! and the unencrypted `openssh-key-v1` private key file (PROTOCOL.key in OpenSSH).
//!
//! Written for reproducible builds: [`KeyPair::private_openssh`] is a pure function of the key,
//! so a rebuild that reuses a stored key writes the same bytes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::error::{Classify, Kind};

#[cfg(test)]
mod tests;

const KEY_TYPE: &str = "ssh-ed25519";
const MAGIC: &[u8] = b"openssh-key-v1\0";
const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";
/// The cipher block size of `none`, which the private section is padded to.
const BLOCK: usize = 8;
/// Column at which OpenSSH wraps the base64 of a private key.
const WRAP: usize = 70;
/// Keeps the derived check ints from being any other use's hash of the seed.
const CHECK_DOMAIN: &[u8] = b"pibake sshkey check int v1\0";

/// An Ed25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    seed: [u8; 32],
    public: [u8; 32],
    comment: String,
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS random number generator failed.
    #[error("cannot get random bytes from the operating system for a new key: {0}")]
    Random(getrandom::Error),
    /// No `BEGIN OPENSSH PRIVATE KEY` armour.
    #[error("not an OpenSSH private key: no {BEGIN} ... {END} block")]
    NotArmored,
    /// The armoured body is not base64.
    #[error("the OpenSSH private key is damaged: its body is not valid base64 ({0})")]
    Base64(base64::DecodeError),
    /// The decoded body does not start with `openssh-key-v1`.
    #[error("not an OpenSSH private key: the body does not start with \"openssh-key-v1\"")]
    BadMagic,
    /// The key ends before a field it announces.
    #[error("the OpenSSH private key is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    /// The key is protected by a passphrase.
    #[error(
        "the private key is encrypted (cipher {cipher}, kdf {kdf}); pibake needs an unencrypted key"
    )]
    Encrypted {
        /// The cipher the file names.
        cipher: String,
        /// The key derivation function the file names.
        kdf: String,
    },
    /// A file with other than one key in it.
    #[error("the OpenSSH private key file holds {0} keys; pibake reads files with exactly one")]
    KeyCount(u32),
    /// A key of a type other than Ed25519.
    #[error("the private key is of type {0}; pibake uses only ssh-ed25519 keys")]
    KeyType(String),
    /// The two check ints differ.
    #[error("the OpenSSH private key is damaged: its two check ints differ")]
    CheckMismatch,
    /// The private section's padding is not 1, 2, 3, ... up to the block size.
    #[error("the OpenSSH private key is damaged: bad padding after the private section")]
    BadPadding,
    /// A field has the wrong length.
    #[error("the OpenSSH private key is damaged: the {field} is {len} bytes, not {want}")]
    BadLength {
        /// Which field.
        field: &'static str,
        /// Its length in the file.
        len: usize,
        /// Its length for ssh-ed25519.
        want: usize,
    },
    /// A stored public half that is not the seed's.
    #[error("the OpenSSH private key is damaged: the {0} does not match the private seed")]
    PublicMismatch(&'static str),
    /// Bytes after the last field.
    #[error("the OpenSSH private key is damaged: {0} unexpected bytes after the key")]
    TrailingData(usize),
}

impl Classify for KeyError {
    fn kind(&self) -> Kind {
        match self {
            KeyError::Random(_) => Kind::Environment,
            _ => Kind::BadInput,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            KeyError::Encrypted { .. } => Some(
                "remove the passphrase with `ssh-keygen -p -N '' -f FILE`, or move the file away \
                 to let pibake make a new key"
                    .into(),
            ),
            KeyError::KeyType(_) => {
                Some("make an Ed25519 key with `ssh-keygen -t ed25519 -N ''`".into())
            }
            _ => None,
        }
    }
}

impl fmt::Debug for KeyPair {
    // By hand, so that a logged key never shows its seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("comment", &self.comment)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl KeyPair {
    /// A new key pair with a seed from the OS random number generator.
    pub fn generate(comment: &str) -> Result<KeyPair, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(KeyError::Random)?;
        let key = KeyPair::from_seed(seed, comment);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(key)
    }

    /// The key pair of a 32-byte Ed25519 seed (RFC 8032's private key).
    pub fn from_seed(seed: [u8; 32], comment: &str) -> KeyPair {
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        KeyPair {
            seed,
            public,
            comment: comment.to_string(),
        }
    }

    /// The comment stored with the key.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The `authorized_keys` / `known_hosts` form, `ssh-ed25519 AAAA... comment`, one line.
    ///
    /// Control characters in the comment become spaces: a newline there would add a line of
    /// the comment's choosing to an `authorized_keys` file.
    pub fn public_line(&self) -> String {
        let blob = self.public_blob_base64();
        let comment: String = self
            .comment
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let comment = comment.trim();
        if comment.is_empty() {
            format!("{KEY_TYPE} {blob}")
        } else {
            format!("{KEY_TYPE} {blob} {comment}")
        }
    }

    /// The base64 of the public key blob: the `AAAA...` part of [`KeyPair::public_line`].
    pub fn public_blob_base64(&self) -> String {
        STANDARD.encode(self.public_blob())
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.public_blob());
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
    }

    /// RFC 8709's public key blob: string "ssh-ed25519", string key.
    fn public_blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(51);
        put_string(&mut b, KEY_TYPE.as_bytes());
        put_string(&mut b, &self.public);
        b
    }

    /// The check ints OpenSSH fills at random, derived from the seed instead so that the file
    /// is the same on every write; a reader only compares the two.
    fn check_int(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(CHECK_DOMAIN);
        h.update(self.seed);
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// The unencrypted OpenSSH private key file, the same text for the same key every time.
    pub fn private_openssh(&self) -> String {
        let mut section = Vec::new();
        let check = self.check_int();
        section.extend_from_slice(&check);
        section.extend_from_slice(&check);
        put_string(&mut section, KEY_TYPE.as_bytes());
        put_string(&mut section, &self.public);
        let mut private = [0u8; 64];
        private[..32].copy_from_slice(&self.seed);
        private[32..].copy_from_slice(&self.public);
        put_string(&mut section, &private);
        zeroize::Zeroize::zeroize(&mut private);
        put_string(&mut section, self.comment.as_bytes());
        let mut pad = 1u8;
        while section.len() % BLOCK != 0 {
            section.push(pad);
            pad += 1;
        }

        let mut body = Vec::new();
        body.extend_from_slice(MAGIC);
        put_string(&mut body, b"none");
        put_string(&mut body, b"none");
        put_string(&mut body, b"");
        body.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut body, &self.public_blob());
        put_string(&mut body, &section);
        zeroize::Zeroize::zeroize(&mut section);

        let mut encoded = STANDARD.encode(&body);
        zeroize::Zeroize::zeroize(&mut body);
        let mut out = String::with_capacity(encoded.len() + encoded.len() / WRAP + 80);
        out.push_str(BEGIN);
        out.push('\n');
        // Base64 is ASCII, so byte chunks are whole characters.
        for line in encoded.as_bytes().chunks(WRAP) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        zeroize::Zeroize::zeroize(&mut encoded);
        out.push_str(END);
        out.push('\n');
        out
    }

    /// Read an unencrypted Ed25519 OpenSSH private key, as [`KeyPair::private_openssh`] or
    /// `ssh-keygen -t ed25519 -N ''` writes it.
    pub fn parse_private(text: &str) -> Result<KeyPair, KeyError> {
        let start = text.find(BEGIN).ok_or(KeyError::NotArmored)? + BEGIN.len();
        let len = text[start..].find(END).ok_or(KeyError::NotArmored)?;
        let b64: String = text[start..start + len]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let body = zeroize::Zeroizing::new(STANDARD.decode(b64).map_err(KeyError::Base64)?);

        let mut r = Reader(&body);
        if !matches!(r.take(MAGIC.len(), "header"), Ok(m) if m == MAGIC) {
            return Err(KeyError::BadMagic);
        }
        let cipher = r.string("cipher name")?;
        let kdf = r.string("kdf name")?;
        let _kdf_options = r.string("kdf options")?;
        if cipher != b"none" || kdf != b"none" {
            return Err(KeyError::Encrypted {
                cipher: lossy(cipher),
                kdf: lossy(kdf),
            });
        }
        let count = r.u32("key count")?;
        if count != 1 {
            return Err(KeyError::KeyCount(count));
        }
        let outer_blob = r.string("public key")?;
        let section = r.string("private section")?;
        if !r.0.is_empty() {
            return Err(KeyError::TrailingData(r.0.len()));
        }

        let mut outer = Reader(outer_blob);
        let outer_type = outer.string("public key type")?;
        if outer_type != KEY_TYPE.as_bytes() {
            return Err(KeyError::KeyType(lossy(outer_type)));
        }

        if section.len() % BLOCK != 0 {
            return Err(KeyError::BadPadding);
        }
        let mut s = Reader(section);
        let check1 = s.u32("check ints")?;
        let check2 = s.u32("check ints")?;
        if check1 != check2 {
            return Err(KeyError::CheckMismatch);
        }
        let key_type = s.string("private key type")?;
        if key_type != KEY_TYPE.as_bytes() {
            return Err(KeyError::KeyType(lossy(key_type)));
        }
        let public = fixed::<32>(s.string("public key")?, "public key")?;
        let private = s.string("private key")?;
        let private = fixed::<64>(private, "private key")?;
        let comment = lossy(s.string("comment")?);
        for (i, &b) in s.0.iter().enumerate() {
            if usize::from(b) != i + 1 {
                return Err(KeyError::BadPadding);
            }
        }
        if s.0.len() >= BLOCK {
            return Err(KeyError::BadPadding);
        }

        let mut seed = [0u8; 32];
        seed.copy_from_slice(&private[..32]);
        let key = KeyPair::from_seed(seed, &comment);
        zeroize::Zeroize::zeroize(&mut seed);
        if private[32..] != key.public {
            return Err(KeyError::PublicMismatch("public half of the private key"));
        }
        if public != key.public {
            return Err(KeyError::PublicMismatch(
                "public key in the private section",
            ));
        }
        if outer_blob != key.public_blob().as_slice() {
            return Err(KeyError::PublicMismatch("public key in the header"));
        }
        Ok(key)
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

/// An SSH wire-format `string`: a big-endian u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every string written here is a few hundred bytes at most.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixed<const N: usize>(bytes: &[u8], field: &'static str) -> Result<[u8; N], KeyError> {
    bytes.try_into().map_err(|_| KeyError::BadLength {
        field,
        len: bytes.len(),
        want: N,
    })
}

/// Reads SSH wire-format fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, KeyError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, field: &'static str) -> Result<&'a [u8], KeyError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| KeyError::Truncated(field))?;
        self.take(len, field)
    }
}
