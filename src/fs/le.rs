//! Little-endian fields of on-disk structures, widened to `u64` for offset arithmetic.

/// Little-endian u16 at `at`, widened.
pub(crate) fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Little-endian u32 at `at`, widened.
pub(crate) fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
