//! Stream framing: the 12-byte stream header and footer, their flags, and the byte helpers the
//! container code shares.

use super::check::crc32;

pub(crate) const STREAM_HEADER_SIZE: u64 = 12;
pub(crate) const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
pub(crate) const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// The smallest stream: header, an index with no records, footer.
pub(crate) const MIN_STREAM: u64 = 2 * STREAM_HEADER_SIZE + 8;

/// The check ID of valid stream flags: a zero byte, then the ID in the low four bits.
pub(crate) fn stream_flags(flags: &[u8]) -> Option<u8> {
    match flags {
        [0, f] if f & 0xF0 == 0 => Some(*f),
        _ => None,
    }
}

pub(crate) fn round4(n: u64) -> u64 {
    (n + 3) & !3
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// A stream header announcing `check`.
pub fn stream_header(check: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..6].copy_from_slice(&HEADER_MAGIC);
    h[7] = check;
    let crc = crc32(&h[6..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The footer closing a stream announcing `check` whose index is `index_len` bytes; `None` when
/// the index is too big for the footer to describe.
pub fn stream_footer(check: u8, index_len: u64) -> Option<[u8; 12]> {
    if index_len < 8 || !index_len.is_multiple_of(4) {
        return None;
    }
    let backward = u32::try_from(index_len / 4 - 1).ok()?;
    let mut f = [0u8; 12];
    f[4..8].copy_from_slice(&backward.to_le_bytes());
    f[9] = check;
    f[10..].copy_from_slice(&FOOTER_MAGIC);
    let crc = crc32(&f[4..10]);
    f[..4].copy_from_slice(&crc.to_le_bytes());
    Some(f)
}
