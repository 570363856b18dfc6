//! Compressing with liblzma's raw and block encoders: preset 6's options, a lone-LZMA2 filter
//! chain, a block header, and a whole block.

use liblzma_sys as sys;

/// Compression preset, as `xz -6` (the default and what Raspberry Pi OS uses).
pub const PRESET: u32 = 6;

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
///
/// The dictionary is preset 6's 8 MiB or, for less data, the smallest power of two that holds
/// it: matches cannot reach further anyway, and the encoder's memory and set-up time grow with
/// its dictionary (about 11 bytes per byte), which counts when many small blocks are encoded.
pub fn encode_block(data: &[u8], check: u8, store: bool) -> Result<(Vec<u8>, u64), String> {
    let mut lzma2 = preset_options()?;
    let fits = data.len().max(4096).checked_next_power_of_two();
    if let Some(fits) = fits.and_then(|n| u32::try_from(n).ok()) {
        lzma2.dict_size = lzma2.dict_size.min(fits);
    }
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
