//! Integrity checks: the CRC32 guarding the container's own metadata, and the per-block check
//! types (none, CRC32, CRC64, SHA-256) by ID.

use liblzma_sys as sys;
use sha2::{Digest, Sha256};

pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

pub(crate) fn check_name(id: u8) -> &'static str {
    match id {
        0 => "no check",
        1 => "CRC32",
        4 => "CRC64",
        10 => "SHA-256",
        _ => "a reserved check type",
    }
}

/// Whether liblzma can verify check type `check`.
pub(crate) fn check_supported(check: u8) -> bool {
    // SAFETY: a pure function of its integer argument.
    unsafe { sys::lzma_check_is_supported(sys::lzma_check::from(check)) != 0 }
}

/// Size of the integrity check `check`, for the check types this module computes.
pub(crate) fn check_size(check: u8) -> Option<usize> {
    match check {
        0 => Some(0),
        1 => Some(4),
        4 => Some(8),
        10 => Some(32),
        _ => None,
    }
}

/// The integrity check of type `check` over `data`, as a block stores it.
pub(crate) fn check_value(check: u8, data: &[u8]) -> Vec<u8> {
    match check {
        // SAFETY: the pointer and length describe `data`; the function only reads it.
        1 => unsafe { sys::lzma_crc32(data.as_ptr(), data.len(), 0) }
            .to_le_bytes()
            .to_vec(),
        // SAFETY: as for CRC32 above.
        4 => unsafe { sys::lzma_crc64(data.as_ptr(), data.len(), 0) }
            .to_le_bytes()
            .to_vec(),
        10 => Sha256::digest(data).to_vec(),
        _ => Vec::new(),
    }
}
