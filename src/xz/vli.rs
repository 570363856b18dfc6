//! The format's variable-length integers: seven bits a byte, low bits first, at most nine bytes.

/// Largest value of the format's variable-length integers (2^63 - 1).
pub(crate) const VLI_MAX: u64 = u64::MAX / 2;

/// Decode one of the format's variable-length integers at `*pos`, moving past it.
pub(crate) fn read_vli(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero last byte would be a longer-than-needed encoding, which the format forbids.
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

/// Append `value` as a variable-length integer.
pub(crate) fn write_vli(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_and_overlong_ones_are_refused() {
        for v in [0, 1, 127, 128, 300, 1 << 35, VLI_MAX] {
            let mut b = Vec::new();
            write_vli(&mut b, v);
            let mut pos = 0;
            assert_eq!(read_vli(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
        let mut pos = 0;
        assert_eq!(
            read_vli(&[0x80, 0x00], &mut pos),
            None,
            "overlong encodings are invalid"
        );
        let mut pos = 0;
        assert_eq!(read_vli(&[0xFF; 10], &mut pos), None);
    }
}
