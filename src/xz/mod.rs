//! The `.xz` format, below every stage that reads or writes it.
//!
//! An `.xz` file ends with an index of every block's compressed and uncompressed size, so the
//! block holding any byte of the image can be found without reading what precedes it, and decoded
//! on its own. [`XzIndex`] reads those indexes (walking back from the end of the file, stream by
//! stream); [`XzReader`] decodes only the blocks a read touches and keeps the last few;
//! [`XzReader::for_each_block`] decodes the whole file on every core, in order, for streaming it
//! out. [`MtXzReader`] decodes a whole stream from the start, on every core. [`layout`] cuts an
//! edited block into the base's LZMA2 chunks the edit left valid and pieces to compress again,
//! and [`encode_block`] compresses a piece or a whole block; [`stream_header`], [`index_bytes`] and [`stream_footer`] frame a stream of such
//! blocks.
//!
//! Every length and offset read from the file is checked against the file's size and the format's
//! limits before it is used; every stream header, index and footer is checked against its CRC32,
//! and every block against its own integrity check when it is decoded. A file holding one huge
//! block (xz run single-threaded without `--block-size`) gains nothing from random access and is
//! refused with [`XzError::NotRandomAccess`]; callers decode such a file whole.
//!
//! One job a file: variable-length integers (`vli`), integrity checks (`check`), stream framing
//! (`stream`), the index (`index`), liblzma's block decoder (`decoder`), the LZMA2 chunk parser
//! (`lzma2`), the block cutter (`splice`), the encoders (`encoder`), the random-access reader
//! (`reader`), the streaming multi-threaded reader (`mt`), positioned reads (`pread`) and the
//! errors (`error`). Nothing outside uses more than what this file exports.

mod check;
mod decoder;
mod encoder;
mod error;
mod index;
mod lzma2;
mod mt;
mod pread;
mod reader;
mod splice;
mod stream;
#[cfg(test)]
mod testutil;
mod vli;

pub(crate) use decoder::decode_block;
pub use decoder::decode_raw;
pub use encoder::{PRESET, encode_block};
pub use error::XzError;
pub use index::{XzBlock, XzIndex, XzStream, index_bytes};
pub(crate) use lzma2::parse as lzma2_chunks;
pub use mt::MtXzReader;
pub(crate) use pread::{check_bounds, read_exact_at};
pub use reader::{DEFAULT_CACHE_BLOCKS, MAX_BLOCK, XzReader};
pub use splice::{COARSE, FINE, Layout, Piece, Prefix, layout};
pub use stream::{stream_footer, stream_header};
