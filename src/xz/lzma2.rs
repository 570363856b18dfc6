//! The chunk structure of an LZMA2 stream: each chunk's control byte, the decoded bytes it
//! produces and where its header and payload lie, read without decoding anything.

use std::ops::Range;

/// One chunk of an LZMA2 stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Its control byte: 1 or 2 uncompressed, 0x80 and up compressed.
    pub(crate) control: u8,
    /// The decoded bytes it produces, as offsets into the block.
    pub(crate) data: Range<usize>,
    /// Its header and payload, as offsets into the LZMA2 stream.
    pub(crate) raw: Range<usize>,
}

impl Chunk {
    pub(crate) fn compressed(&self) -> bool {
        self.control >= 0x80
    }
}

pub(crate) fn resets_dictionary(control: u8) -> bool {
    control == 1 || control >= 0xE0
}

/// The chunks of an LZMA2 stream and the property byte its compressed chunks declare; `None` when
/// the stream is malformed, resets its dictionary anywhere but at its first chunk, or declares
/// different properties along the way.
pub(crate) fn parse(lzma2: &[u8]) -> Option<(Vec<Chunk>, Option<u8>)> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut props: Option<u8> = None;
    let (mut pos, mut out) = (0usize, 0usize);
    loop {
        let control = *lzma2.get(pos)?;
        if control == 0 {
            return Some((chunks, props));
        }
        let (header, decoded, payload) = if control >= 0x80 {
            let h = lzma2.get(pos..pos + 5)?;
            let decoded =
                (usize::from(control & 0x1F) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]))
                    + 1;
            let payload = (usize::from(h[3]) << 8 | usize::from(h[4])) + 1;
            if control >= 0xC0 {
                let p = *lzma2.get(pos + 5)?;
                if props.is_some_and(|q| q != p) {
                    return None;
                }
                props = Some(p);
                (6, decoded, payload)
            } else {
                (5, decoded, payload)
            }
        } else if control <= 2 {
            let h = lzma2.get(pos..pos + 3)?;
            let decoded = (usize::from(h[1]) << 8 | usize::from(h[2])) + 1;
            (3, decoded, decoded)
        } else {
            return None;
        };
        if chunks.is_empty() != resets_dictionary(control) {
            return None;
        }
        let end = pos + header + payload;
        if end > lzma2.len() {
            return None;
        }
        chunks.push(Chunk {
            control,
            data: out..out + decoded,
            raw: pos..end,
        });
        (pos, out) = (end, out + decoded);
    }
}
