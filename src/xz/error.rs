//! What goes wrong reading an `.xz` file block by block.

use std::io;

/// Why an `.xz` file could not be read block by block.
#[derive(Debug, thiserror::Error)]
pub enum XzError {
    /// Reading the file failed, or memory for a block could not be had.
    #[error("reading the .xz file failed: {0}")]
    Io(#[from] io::Error),
    /// Stream headers, footers or indexes are damaged, truncated, or not `.xz` at all.
    #[error("not a valid .xz file (at byte {offset}): {reason}")]
    Format {
        /// Byte of the file where the problem was found.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// One block does not decode or does not match its integrity check.
    #[error(
        "xz block {index} (uncompressed offset {uncompressed_offset}, file offset {file_offset}) \
         is corrupt: {reason}"
    )]
    CorruptBlock {
        /// The block's number in the file, from 0.
        index: usize,
        /// Where its bytes start in the decoded image.
        uncompressed_offset: u64,
        /// Where its header starts in the file.
        file_offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is sound but laid out so that reading it at random would not pay off.
    #[error("the .xz file cannot be read at random: {reason}")]
    NotRandomAccess {
        /// Why, in a few words.
        reason: String,
    },
}

impl XzError {
    /// True when the file is at fault (damaged, truncated, not `.xz`), false for I/O trouble and
    /// for [`XzError::NotRandomAccess`], which only asks the caller to decode the file whole.
    pub fn is_bad_input(&self) -> bool {
        match self {
            XzError::Format { .. } | XzError::CorruptBlock { .. } => true,
            XzError::Io(_) | XzError::NotRandomAccess { .. } => false,
        }
    }
}

impl crate::error::Classify for XzError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

impl From<XzError> for io::Error {
    /// I/O errors pass through; the rest become `InvalidData` carrying the [`XzError`], so its
    /// message survives and a caller can still downcast to it.
    fn from(e: XzError) -> Self {
        match e {
            XzError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

pub(crate) fn format_err(offset: u64, reason: impl Into<String>) -> XzError {
    XzError::Format {
        offset,
        reason: reason.into(),
    }
}
