//! One block decoded through liblzma's block decoder, checked against the index and its own
//! integrity check; and the filter chain read from a block header.

use std::fs::File;
use std::io;

use liblzma_sys as sys;

use super::check::check_name;
use super::error::XzError;
use super::index::{XzBlock, XzIndex};
use super::pread::read_exact_at;

/// The filter chain of one block header, freed through liblzma when dropped.
struct Filters([sys::lzma_filter; sys::LZMA_FILTERS_MAX as usize + 1]);

impl Filters {
    fn new() -> Self {
        Filters(
            [sys::lzma_filter {
                id: sys::LZMA_VLI_UNKNOWN,
                options: std::ptr::null_mut(),
            }; sys::LZMA_FILTERS_MAX as usize + 1],
        )
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        // SAFETY: every entry is either unused (LZMA_VLI_UNKNOWN with null options, which
        // terminates the array) or was filled by lzma_block_header_decode with options from
        // liblzma's default allocator, which lzma_filters_free releases exactly once.
        unsafe { sys::lzma_filters_free(self.0.as_mut_ptr(), std::ptr::null()) };
    }
}

pub(crate) fn to_usize(n: u64) -> Result<usize, XzError> {
    usize::try_from(n).map_err(|_| {
        XzError::Io(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("a block of {n} bytes does not fit in this machine's memory"),
        ))
    })
}

pub(crate) fn out_of_memory() -> XzError {
    XzError::Io(io::Error::new(
        io::ErrorKind::OutOfMemory,
        "out of memory decoding an xz block",
    ))
}

/// Decode block `i` of `index` from `file`, checking it against its integrity check.
pub fn decode_block(file: &File, index: &XzIndex, i: usize) -> Result<Vec<u8>, XzError> {
    let raw = read_stored(file, index, i)?;
    decode_raw(&raw, index.get(i)?, i, index.check())
}

/// Block `i` of `index` as `file` stores it: header, compressed data, padding and check.
pub(crate) fn read_stored(file: &File, index: &XzIndex, i: usize) -> Result<Vec<u8>, XzError> {
    let block = index.get(i)?;
    let mut raw = vec![0u8; to_usize(block.total_size)?];
    read_exact_at(file, block.file_offset, &mut raw)?;
    Ok(raw)
}

/// Decode the whole block `raw` (header to check), described by `block`, number `index`.
pub fn decode_raw(
    raw: &[u8],
    block: &XzBlock,
    index: usize,
    check: u8,
) -> Result<Vec<u8>, XzError> {
    let corrupt = |reason: String| XzError::CorruptBlock {
        index,
        uncompressed_offset: block.uncompressed_offset,
        file_offset: block.file_offset,
        reason,
    };
    let first = raw.first().copied().unwrap_or(0);
    if first == 0 {
        return Err(corrupt(
            "an index starts where its block header should".into(),
        ));
    }
    let header_size = (usize::from(first) + 1) * 4;
    if header_size > raw.len() {
        return Err(corrupt(format!(
            "its {header_size}-byte header is longer than the {} bytes the index gives the block",
            raw.len()
        )));
    }
    let out_len = to_usize(block.uncompressed_size)?;
    let mut filters = Filters::new();
    let (mut opts, ret) = read_header(raw, header_size, check, &mut filters);
    if ret != sys::LZMA_OK {
        return Err(corrupt(format!(
            "its header does not decode ({})",
            ret_text(ret)
        )));
    }
    // SAFETY: `opts` was filled in by the header decoder; the call only reads and writes it.
    let ret = unsafe { sys::lzma_block_compressed_size(&mut opts, block.unpadded_size) };
    if ret != sys::LZMA_OK {
        return Err(corrupt(
            "its header and the index disagree about its compressed size".into(),
        ));
    }
    if opts.uncompressed_size != sys::LZMA_VLI_UNKNOWN
        && opts.uncompressed_size != block.uncompressed_size
    {
        return Err(corrupt(format!(
            "its header says it decodes to {} bytes, the index {}",
            opts.uncompressed_size, block.uncompressed_size
        )));
    }
    // The decoder then fails a block that decodes to more or fewer bytes than the index says.
    opts.uncompressed_size = block.uncompressed_size;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(out_len)
        .map_err(|_| out_of_memory())?;
    let mut in_pos = header_size;
    let mut out_pos = 0usize;
    // SAFETY: the input pointer and size describe `raw`, with `in_pos` inside it; the output
    // pointer is valid for `out_len` bytes of writes (reserved above) and liblzma writes only
    // below `out_pos`; `opts` and the filters it points to live through the call.
    let ret = unsafe {
        sys::lzma_block_buffer_decode(
            &mut opts,
            std::ptr::null(),
            raw.as_ptr(),
            &mut in_pos,
            raw.len(),
            out.as_mut_ptr(),
            &mut out_pos,
            out_len,
        )
    };
    match ret {
        sys::LZMA_OK => {}
        sys::LZMA_MEM_ERROR => return Err(out_of_memory()),
        sys::LZMA_DATA_ERROR => {
            return Err(corrupt(format!(
                "its data does not decode or does not match its {} (damaged or truncated)",
                check_name(check)
            )));
        }
        sys::LZMA_BUF_ERROR => {
            return Err(corrupt(
                "it decodes to more bytes than the index says".into(),
            ));
        }
        other => return Err(corrupt(ret_text(other).into())),
    }
    if in_pos != raw.len() || out_pos != out_len {
        return Err(corrupt(format!(
            "it decodes to {out_pos} bytes from {in_pos} of its {} bytes",
            raw.len()
        )));
    }
    // SAFETY: liblzma initialised the first `out_pos` bytes, and `out_pos == out_len`, which is
    // within the capacity reserved above.
    unsafe { out.set_len(out_pos) };
    Ok(out)
}

/// The header size and dictionary size of a block whose only filter is LZMA2, read from its
/// header (the first bytes of `raw`); `None` for any other filter chain or a header that does not
/// decode.
pub(crate) fn lone_lzma2(raw: &[u8], check: u8) -> Option<(usize, u32)> {
    let header_size = (usize::from(*raw.first()?) + 1) * 4;
    if raw[0] == 0 || header_size > raw.len() {
        return None;
    }
    let mut filters = Filters::new();
    let (_, ret) = read_header(raw, header_size, check, &mut filters);
    let [lzma2, end, ..] = &filters.0;
    if ret != sys::LZMA_OK || lzma2.id != sys::LZMA_FILTER_LZMA2 || end.id != sys::LZMA_VLI_UNKNOWN
    {
        return None;
    }
    // SAFETY: the header decoder allocated an lzma_options_lzma for the LZMA2 filter it
    // reported; it stays alive until `filters` drops at the end of this function.
    let dict = unsafe { (*lzma2.options.cast::<sys::lzma_options_lzma>()).dict_size };
    Some((header_size, dict))
}

/// Decode the `header_size`-byte block header at the start of `raw` (the caller has checked it
/// is that long), its filter chain into `filters`; liblzma's verdict comes with the result.
fn read_header(
    raw: &[u8],
    header_size: usize,
    check: u8,
    filters: &mut Filters,
) -> (sys::lzma_block, sys::lzma_ret) {
    debug_assert!(header_size <= raw.len());
    // SAFETY: an all-zero lzma_block is a valid value (null pointers, zero integers); the fields
    // the header decoder reads are set just below.
    let mut opts: sys::lzma_block = unsafe { std::mem::zeroed() };
    opts.version = 1;
    opts.header_size = header_size as u32;
    opts.check = sys::lzma_check::from(check);
    opts.filters = filters.0.as_mut_ptr();
    // SAFETY: `raw` holds at least `header_size` bytes (the callers check), all the decoder
    // reads; `opts.filters` points to LZMA_FILTERS_MAX + 1 entries as the API requires and
    // outlives the call; the options it allocates are freed when `filters` drops.
    let ret = unsafe { sys::lzma_block_header_decode(&mut opts, std::ptr::null(), raw.as_ptr()) };
    (opts, ret)
}

fn ret_text(ret: sys::lzma_ret) -> &'static str {
    match ret {
        sys::LZMA_OPTIONS_ERROR => "it uses filters or options liblzma cannot decode",
        sys::LZMA_UNSUPPORTED_CHECK => "its check type cannot be verified by this liblzma",
        sys::LZMA_DATA_ERROR => "the data is damaged",
        sys::LZMA_MEM_ERROR => "out of memory",
        sys::LZMA_PROG_ERROR => "liblzma reports a misuse of its API",
        _ => "liblzma reports an error",
    }
}
