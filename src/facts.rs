//! Facts about an image.
