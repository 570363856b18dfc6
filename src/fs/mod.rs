//! Filesystems.
