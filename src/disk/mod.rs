//! Disk images as block devices: the read-only base, the copy-on-write layer above it, partition
//! tables, and the byte windows that filesystems are opened on.

pub mod cow;
pub mod device;
pub mod image;
pub mod partition;
pub mod region;
pub mod xz;

pub use cow::CowDisk;
pub use device::{BlockDev, FileDev};
pub use image::{Image, ImageError};
pub use partition::{FsKind, Partition, PartitionTable, TableKind};
pub use region::Region;
pub use xz::{XzBlock, XzDev, XzError, XzIndex, XzStream};
