//! OpenPGP check of the detached signature (`URL.sig`) published beside an image.
//!
//! The signed file is streamed through the verifier, never read into memory whole.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use super::download::Http;
use super::{AcquireError, SignatureCheck};

const MAX_SIGNATURE_BYTES: usize = 64 << 10;

/// Check the detached OpenPGP signature `URL.sig` of `file` with the public key(s) in `key_path`
/// (armored or binary). Any subkey of the key may have made it.
pub(crate) fn verify(
    http: &Http,
    url: &str,
    file: &Path,
    key_path: &Path,
) -> Result<SignatureCheck, AcquireError> {
    let sig_url = format!("{url}.sig");
    let fail = |reason: String| AcquireError::Signature {
        url: url.to_string(),
        reason,
    };
    let key_file = File::open(key_path).map_err(|e| AcquireError::Local {
        path: key_path.to_path_buf(),
        source: e,
    })?;
    let (key, _) = SignedPublicKey::from_reader_single(BufReader::new(key_file))
        .map_err(|e| fail(format!("cannot read the key {}: {e}", key_path.display())))?;
    let sig_bytes = http
        .get_small(&sig_url, MAX_SIGNATURE_BYTES)?
        .ok_or_else(|| fail(format!("the server has no {sig_url}")))?;
    let (sig, _) = DetachedSignature::from_reader_single(&sig_bytes[..])
        .map_err(|e| fail(format!("{sig_url} is not an OpenPGP signature: {e}")))?;
    let open = || {
        File::open(file)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|e| AcquireError::Io {
                what: "cannot read",
                path: file.to_path_buf(),
                source: e,
            })
    };
    // Only keys the signature names as its issuer are tried (each try reads the whole file);
    // a signature without issuer information is tried with every key.
    let issuers: Vec<_> = sig.signature.issuer().into_iter().cloned().collect();
    let named = |id: pgp::types::KeyId| issuers.is_empty() || issuers.contains(&id);
    let mut last_error = String::from("no key with the signature's issuer id");
    let found = |fingerprint: pgp::types::Fingerprint| SignatureCheck {
        signature_url: sig_url.clone(),
        key_fingerprint: hex::encode(fingerprint.as_bytes()),
    };
    if named(key.primary_key.key_id()) {
        match sig.signature.verify(&key.primary_key, open()?) {
            Ok(()) => return Ok(found(key.primary_key.fingerprint())),
            Err(e) => last_error = e.to_string(),
        }
    }
    for sub in &key.public_subkeys {
        if named(sub.key.key_id()) {
            match sig.signature.verify(&sub.key, open()?) {
                Ok(()) => return Ok(found(sub.key.fingerprint())),
                Err(e) => last_error = e.to_string(),
            }
        }
    }
    Err(fail(format!(
        "{sig_url} was not made by {} over this file ({last_error})",
        key_path.display()
    )))
}
