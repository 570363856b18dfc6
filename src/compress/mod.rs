//! Compressed bases: recognise how an image is stored, and decode it to a sparse raw file.
//!
//! Below both `acquire` (which decodes downloads into its cache) and `disk` (which only ever
//! opens bytes that need no decoding), so neither reaches into the other for it.

mod decode;

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

pub use decode::{Decoded, decode_hashed, decode_to};

/// How an image file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A raw disk image.
    #[serde(rename = "raw")]
    None,
    /// `.xz` (what Raspberry Pi OS ships).
    Xz,
    /// `.zst`.
    Zstd,
    /// `.gz`.
    Gzip,
    /// `.zip` holding exactly one `.img`.
    Zip,
}

impl Compression {
    /// Name as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "raw",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Zip => "zip",
        }
    }
}

/// Why an image could not be recognised or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A known compression format pibake does not read.
    #[error(
        "unsupported compression: {0} (pibake reads raw .img, .img.xz, .img.zst, .img.gz and .zip)"
    )]
    Unsupported(&'static str),
    /// The name promises a format the bytes do not have.
    #[error("the file is named .{ext} but does not start with {format} data")]
    NameMismatch {
        /// Extension of the file name.
        ext: String,
        /// Format that extension means.
        format: &'static str,
    },
    /// The compressed stream is damaged or cut short.
    #[error(
        "{format} data is corrupt or truncated at decoded offset {offset} \
         (compressed input read up to byte {input_offset}): {reason}"
    )]
    Corrupt {
        /// Format being decoded.
        format: &'static str,
        /// Decoded bytes written before the failure.
        offset: u64,
        /// Compressed bytes the decoder had consumed (read ahead included) at the failure.
        input_offset: u64,
        /// What the decoder said.
        reason: String,
    },
    /// A `.zip` archive must hold exactly one disk image.
    #[error("the zip archive holds {} .img files, expected exactly one{}", .images.len(), list_names(.images, .entries))]
    ZipImageCount {
        /// Names of the `.img` entries found.
        images: Vec<String>,
        /// Every entry in the archive (to help when no image was found).
        entries: Vec<String>,
    },
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn list_names(images: &[String], entries: &[String]) -> String {
    let show = |v: &[String]| {
        let mut s = v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 10 {
            s.push_str(&format!(", and {} more", v.len() - 10));
        }
        s
    };
    if !images.is_empty() {
        format!(": {}", show(images))
    } else if entries.is_empty() {
        " (the archive is empty)".to_string()
    } else {
        format!(" (entries: {})", show(entries))
    }
}

impl DecodeError {
    /// True when the input file is at fault (damaged, unsupported, mislabelled); false for I/O
    /// failures of the machine.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, DecodeError::Io(_))
    }
}

impl crate::error::Classify for DecodeError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// Identify the format of `path` from its first bytes, cross-checked against its extension.
pub fn detect(path: &Path) -> Result<Compression, DecodeError> {
    let mut head = [0u8; 8];
    let mut f = File::open(path)?;
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    let found = sniff(head)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let promised = match ext.as_str() {
        "xz" => Some(Compression::Xz),
        "zst" | "zstd" => Some(Compression::Zstd),
        "gz" => Some(Compression::Gzip),
        "zip" => Some(Compression::Zip),
        _ => None,
    };
    match promised {
        Some(p) if p != found => Err(DecodeError::NameMismatch {
            ext,
            format: p.name(),
        }),
        _ => Ok(found),
    }
}

fn sniff(head: &[u8]) -> Result<Compression, DecodeError> {
    const UNSUPPORTED: &[(&[u8], &str)] = &[
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"7z\xbc\xaf\x27\x1c", "7-zip"),
        (b"\x5d\x00\x00", "lzma (legacy .lzma)"),
    ];
    if head.starts_with(b"\xfd7zXZ\x00") {
        return Ok(Compression::Xz);
    }
    if head.starts_with(b"\x28\xb5\x2f\xfd") {
        return Ok(Compression::Zstd);
    }
    if head.starts_with(b"\x1f\x8b") {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Compression::Zip);
    }
    for (magic, name) in UNSUPPORTED {
        if head.starts_with(magic) {
            return Err(DecodeError::Unsupported(name));
        }
    }
    Ok(Compression::None)
}

pub(crate) fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats_by_magic() {
        assert_eq!(sniff(b"\xfd7zXZ\x00\x00\x04").unwrap(), Compression::Xz);
        assert_eq!(sniff(b"\x28\xb5\x2f\xfd").unwrap(), Compression::Zstd);
        assert_eq!(sniff(b"\x1f\x8b\x08").unwrap(), Compression::Gzip);
        assert_eq!(sniff(&[0; 8]).unwrap(), Compression::None);
        assert!(matches!(
            sniff(b"BZh91AY"),
            Err(DecodeError::Unsupported("bzip2"))
        ));
    }

    #[test]
    fn a_name_that_lies_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("x.img.xz");
        std::fs::write(&src, [0u8; 1024]).unwrap();
        assert!(matches!(
            detect(&src),
            Err(DecodeError::NameMismatch { .. })
        ));
    }
}
