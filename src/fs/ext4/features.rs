//! ext4 feature bits, each named once: the set pibake writes, and names for messages and
//! `inspect`. The driver's gate and the free-space reader both use these.

/// `s_feature_compat`: has_journal.
pub const COMPAT_HAS_JOURNAL: u32 = 0x0004;
/// ext_attr.
pub const COMPAT_EXT_ATTR: u32 = 0x0008;
/// resize_inode: reserved GDT blocks follow each descriptor copy.
pub const COMPAT_RESIZE_INODE: u32 = 0x0010;
/// dir_index.
pub const COMPAT_DIR_INDEX: u32 = 0x0020;
/// sparse_super2: at most two backup superblocks, wherever the superblock says.
pub const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
/// orphan_file.
pub const COMPAT_ORPHAN_FILE: u32 = 0x1000;

/// `s_feature_incompat`: filetype.
pub const INCOMPAT_FILETYPE: u32 = 0x0002;
/// needs_recovery: the journal holds transactions not yet replayed.
pub const INCOMPAT_RECOVER: u32 = 0x0004;
/// meta_bg: descriptors spread through the filesystem.
pub const INCOMPAT_META_BG: u32 = 0x0010;
/// extent.
pub const INCOMPAT_EXTENT: u32 = 0x0040;
/// 64bit: block numbers and descriptors have high halves.
pub const INCOMPAT_64BIT: u32 = 0x0080;
/// flex_bg.
pub const INCOMPAT_FLEX_BG: u32 = 0x0200;
/// metadata_csum_seed.
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;

/// `s_feature_ro_compat`: sparse_super: backups only in groups 0, 1 and powers of 3, 5, 7.
pub const RO_SPARSE_SUPER: u32 = 0x0001;
/// large_file.
pub const RO_LARGE_FILE: u32 = 0x0002;
/// huge_file.
pub const RO_HUGE_FILE: u32 = 0x0008;
/// gdt_csum: uninit flags in descriptors can be trusted.
pub const RO_GDT_CSUM: u32 = 0x0010;
/// dir_nlink.
pub const RO_DIR_NLINK: u32 = 0x0020;
/// extra_isize.
pub const RO_EXTRA_ISIZE: u32 = 0x0040;
/// bigalloc: allocation in clusters of blocks.
pub const RO_BIGALLOC: u32 = 0x0200;
/// metadata_csum (implies what gdt_csum gives).
pub const RO_METADATA_CSUM: u32 = 0x0400;

/// `s_state`: errors were detected.
pub const STATE_ERRORS: u16 = 0x0002;

/// Compat features pibake writes (orphan_file only empty: orphan_present is refused).
pub const COMPAT_OK: u32 = COMPAT_HAS_JOURNAL
    | COMPAT_EXT_ATTR
    | COMPAT_RESIZE_INODE
    | COMPAT_DIR_INDEX
    | COMPAT_ORPHAN_FILE;
/// Incompat features pibake writes.
pub const INCOMPAT_OK: u32 =
    INCOMPAT_FILETYPE | INCOMPAT_EXTENT | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_CSUM_SEED;
/// Read-only-compat features pibake writes.
pub const RO_COMPAT_OK: u32 = RO_SPARSE_SUPER
    | RO_LARGE_FILE
    | RO_HUGE_FILE
    | RO_DIR_NLINK
    | RO_EXTRA_ISIZE
    | RO_METADATA_CSUM;

/// Every bit with a name, per set (compat, incompat, ro_compat), as `dumpe2fs` spells them.
const NAMES: [&[(u32, &str)]; 3] = [
    &[
        (0x1, "dir_prealloc"),
        (0x2, "imagic_inodes"),
        (COMPAT_HAS_JOURNAL, "has_journal"),
        (COMPAT_EXT_ATTR, "ext_attr"),
        (COMPAT_RESIZE_INODE, "resize_inode"),
        (COMPAT_DIR_INDEX, "dir_index"),
        (0x40, "lazy_bg"),
        (COMPAT_SPARSE_SUPER2, "sparse_super2"),
        (0x400, "fast_commit"),
        (0x800, "stable_inodes"),
        (COMPAT_ORPHAN_FILE, "orphan_file"),
    ],
    &[
        (0x1, "compression"),
        (INCOMPAT_FILETYPE, "filetype"),
        (INCOMPAT_RECOVER, "needs_recovery"),
        (0x8, "journal_dev"),
        (INCOMPAT_META_BG, "meta_bg"),
        (INCOMPAT_EXTENT, "extent"),
        (INCOMPAT_64BIT, "64bit"),
        (0x100, "mmp"),
        (INCOMPAT_FLEX_BG, "flex_bg"),
        (0x400, "ea_inode"),
        (0x1000, "dirdata"),
        (INCOMPAT_CSUM_SEED, "metadata_csum_seed"),
        (0x4000, "large_dir"),
        (0x8000, "inline_data"),
        (0x10000, "encrypt"),
        (0x20000, "casefold"),
    ],
    &[
        (RO_SPARSE_SUPER, "sparse_super"),
        (RO_LARGE_FILE, "large_file"),
        (0x4, "btree_dir"),
        (RO_HUGE_FILE, "huge_file"),
        (RO_GDT_CSUM, "gdt_csum"),
        (RO_DIR_NLINK, "dir_nlink"),
        (RO_EXTRA_ISIZE, "extra_isize"),
        (0x80, "has_snapshot"),
        (0x100, "quota"),
        (RO_BIGALLOC, "bigalloc"),
        (RO_METADATA_CSUM, "metadata_csum"),
        (0x1000, "replica"),
        (0x2000, "read-only"),
        (0x4000, "project"),
        (0x8000, "verity"),
        (0x10000, "orphan_present"),
    ],
];

/// Names of the bits set in each of (compat, incompat, ro_compat), set by set, lowest bit first.
pub fn names(compat: u32, incompat: u32, ro: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (bits, table) in [compat, incompat, ro].into_iter().zip(NAMES) {
        for bit in (0..32).map(|i| 1u32 << i).filter(|b| bits & b != 0) {
            match table.iter().find(|(b, _)| *b == bit) {
                Some((_, name)) => out.push((*name).to_string()),
                None => out.push(format!("unknown bit {bit:#x}")),
            }
        }
    }
    out
}

/// Every feature of a superblock: those pibake writes (and needs_recovery) first, then the rest.
pub fn all_names(compat: u32, incompat: u32, ro: u32) -> Vec<String> {
    let shown = [COMPAT_OK, INCOMPAT_OK | INCOMPAT_RECOVER, RO_COMPAT_OK];
    let mut out = names(compat & shown[0], incompat & shown[1], ro & shown[2]);
    out.extend(names(
        compat & !shown[0],
        incompat & !shown[1],
        ro & !shown[2],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_in_set_then_bit_order() {
        assert_eq!(
            all_names(
                COMPAT_HAS_JOURNAL | 0x1,
                INCOMPAT_EXTENT | 0x8000,
                RO_BIGALLOC
            ),
            [
                "has_journal",
                "extent",
                "dir_prealloc",
                "inline_data",
                "bigalloc"
            ]
        );
        assert_eq!(names(0, 0x4000_0000, 0), ["unknown bit 0x40000000"]);
    }
}
