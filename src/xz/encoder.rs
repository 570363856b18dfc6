//! Compressing with liblzma's raw and block encoders: preset 6's options, a lone-LZMA2 filter
//! chain, a stretch of LZMA2 chunks over a preset dictionary, a block header, and a whole block.

use std::ops::Range;

use liblzma_sys as sys;

/// Compression preset, as `xz -6` (the default and what Raspberry Pi OS uses).
pub const PRESET: u32 = 6;

/// The window of a re-encoded run: its encoder's dictionary, and the most edited bytes before
/// the run that it starts from. Smaller than xz's 8 MiB at preset 6 on purpose: the encoder's
/// memory grows with its dictionary (about 11 bytes per byte), several encoders run at once, and
/// matches further back are rare in disk images. The decoder keeps the base's dictionary size,
/// which is never smaller, so every match stays in reach.
const WINDOW: usize = 2 << 20;

/// The shortest preset dictionary a re-encoded run gets (see [`encode_run`]).
const MIN_PRESET: usize = 64 << 10;

/// The property byte of preset 6 (lc=3, lp=0, pb=2), for a block without compressed chunks.
pub(crate) const DEFAULT_PROPS: u8 = (2 * 5) * 9 + 3;

/// The LZMA options of [`PRESET`], as `xz -6` uses them.
pub(crate) fn preset_options() -> Result<sys::lzma_options_lzma, String> {
    // SAFETY: an all-zero lzma_options_lzma is a valid value (integers, null preset dictionary)
    // that lzma_lzma_preset then fills in.
    let mut o: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: `o` is a valid, writable lzma_options_lzma for the call.
    if unsafe { sys::lzma_lzma_preset(&mut o, PRESET) } != 0 {
        return Err(format!("liblzma does not know preset {PRESET}"));
    }
    Ok(o)
}

/// A filter chain of LZMA2 alone, with options `lzma`, terminated as liblzma expects.
pub(crate) fn lzma2_chain(lzma: &mut sys::lzma_options_lzma) -> [sys::lzma_filter; 2] {
    [
        sys::lzma_filter {
            id: sys::LZMA_FILTER_LZMA2,
            options: (lzma as *mut sys::lzma_options_lzma).cast(),
        },
        sys::lzma_filter {
            id: sys::LZMA_VLI_UNKNOWN,
            options: std::ptr::null_mut(),
        },
    ]
}

/// LZMA options for re-encoding: preset 6's search with dictionary `dict` and property byte
/// `props` (the base's).
pub(crate) fn lzma_options(dict: u32, props: u8) -> Result<sys::lzma_options_lzma, String> {
    let mut o = preset_options()?;
    o.dict_size = dict;
    o.lc = u32::from(props % 9);
    o.lp = u32::from(props / 9 % 5);
    o.pb = u32::from(props / 45);
    Ok(o)
}

/// Compress `edited[run]` as LZMA2 chunks appended to `out`, without an end marker: a fresh
/// model (its first compressed chunk declares `props`) over a dictionary preloaded with up to
/// [`WINDOW`] edited bytes before the run.
pub(crate) fn encode_run(
    edited: &[u8],
    run: Range<usize>,
    dict: u32,
    props: u8,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let window = WINDOW.min(dict as usize);
    // The encoder indexes its preset dictionary before it compresses a byte, at about a fifth of
    // the cost of compressing it; a short run between stored stretches gets a short one, so
    // indexing never costs more than the run itself.
    let reach = window.min(run.len().max(MIN_PRESET));
    let preset = &edited[run.start.saturating_sub(reach)..run.start];
    let mut lzma = lzma_options(window.max(4096) as u32, props)?;
    if !preset.is_empty() {
        lzma.preset_dict = preset.as_ptr();
        lzma.preset_dict_size = preset.len() as u32;
    }
    let filters = lzma2_chain(&mut lzma);
    let input = &edited[run];
    // SAFETY: a pure function of its argument. A block's bound covers its LZMA2 data.
    let bound = unsafe { sys::lzma_block_buffer_bound(input.len()) };
    let start = out.len();
    out.try_reserve(bound)
        .map_err(|_| "out of memory for a rebuilt block".to_string())?;
    let mut pos = 0usize;
    // SAFETY: the input pointer and length describe `input`; the output pointer is valid for
    // `bound` bytes of writes past `start` (reserved above) and liblzma writes only below
    // `pos`; `filters`, `lzma` and the preset dictionary it points into (`edited`) all outlive
    // the call, which does not keep them.
    let ret = unsafe {
        sys::lzma_raw_buffer_encode(
            filters.as_ptr(),
            std::ptr::null(),
            input.as_ptr(),
            input.len(),
            out.as_mut_ptr().add(start),
            &mut pos,
            bound,
        )
    };
    if ret != sys::LZMA_OK {
        return Err(format!(
            "liblzma could not compress a stretch (error {ret})"
        ));
    }
    // SAFETY: liblzma initialised `pos <= bound` bytes past `start`, within the reservation.
    unsafe { out.set_len(start + pos) };
    // The run continues into whatever follows, so its own end marker goes.
    if out.pop() != Some(0x00) {
        return Err("liblzma ended an LZMA2 stretch without an end marker".into());
    }
    Ok(())
}

/// The header of an LZMA2 block with dictionary `dict` whose data is `compressed` bytes long
/// and decodes to `uncompressed` bytes.
pub(crate) fn block_header(
    dict: u32,
    compressed: usize,
    uncompressed: usize,
    check: u8,
) -> Result<Vec<u8>, String> {
    let mut lzma = lzma_options(dict, DEFAULT_PROPS)?;
    let mut filters = lzma2_chain(&mut lzma);
    // SAFETY: an all-zero lzma_block is a valid value; the fields the header functions read are
    // set below.
    let mut block: sys::lzma_block = unsafe { std::mem::zeroed() };
    block.version = 1;
    block.check = sys::lzma_check::from(check);
    block.filters = filters.as_mut_ptr();
    block.compressed_size = compressed as u64;
    block.uncompressed_size = uncompressed as u64;
    // SAFETY: `block` and the filters it points to are valid and live through the call.
    if unsafe { sys::lzma_block_header_size(&mut block) } != sys::LZMA_OK {
        return Err("liblzma cannot size the header of a rebuilt block".into());
    }
    let mut header = vec![0u8; block.header_size as usize];
    // SAFETY: `header` has the `header_size` bytes the encoder writes; `block` is as above.
    if unsafe { sys::lzma_block_header_encode(&block, header.as_mut_ptr()) } != sys::LZMA_OK {
        return Err("liblzma cannot write the header of a rebuilt block".into());
    }
    Ok(header)
}

/// Compress `data` as one xz block at [`PRESET`] with check type `check` (or, when `store`,
/// as LZMA2 uncompressed chunks); returns the whole block (header to check) and its unpadded
/// size.
pub fn encode_block(data: &[u8], check: u8, store: bool) -> Result<(Vec<u8>, u64), String> {
    let mut lzma2 = preset_options()?;
    let mut filters = lzma2_chain(&mut lzma2);
    // SAFETY: an all-zero lzma_block is a valid value; version, check and filters are set below.
    let mut block: sys::lzma_block = unsafe { std::mem::zeroed() };
    block.version = 1;
    block.check = sys::lzma_check::from(check);
    block.filters = filters.as_mut_ptr();
    // SAFETY: a pure function of its argument.
    let bound = unsafe { sys::lzma_block_buffer_bound(data.len()) };
    if bound == 0 {
        return Err(format!(
            "a block of {} bytes is too large to encode",
            data.len()
        ));
    }
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(bound)
        .map_err(|_| "out of memory for the compressed block".to_string())?;
    let mut out_pos = 0usize;
    // SAFETY: the input pointer and length describe `data`; the output pointer is valid for
    // `bound` bytes of writes (reserved above) and liblzma writes only below `out_pos`; `block`,
    // `filters` and `lzma2` all outlive the call.
    let ret = unsafe {
        if store {
            sys::lzma_block_uncomp_encode(
                &mut block,
                data.as_ptr(),
                data.len(),
                out.as_mut_ptr(),
                &mut out_pos,
                bound,
            )
        } else {
            sys::lzma_block_buffer_encode(
                &mut block,
                std::ptr::null(),
                data.as_ptr(),
                data.len(),
                out.as_mut_ptr(),
                &mut out_pos,
                bound,
            )
        }
    };
    if ret != sys::LZMA_OK {
        return Err(format!("liblzma could not compress a block (error {ret})"));
    }
    // SAFETY: liblzma initialised the first `out_pos` bytes, and `out_pos <= bound`, the
    // reserved capacity.
    unsafe { out.set_len(out_pos) };
    // SAFETY: `block` was completed by the encoder; the call only reads it.
    let unpadded = unsafe { sys::lzma_block_unpadded_size(&block) };
    if unpadded == 0 || (unpadded + 3) & !3 != out.len() as u64 {
        return Err("liblzma produced a block of inconsistent size".into());
    }
    Ok((out, unpadded))
}
