//! Checking and splitting the absolute paths the file operations take.

use super::FsError;

/// Longest name a directory entry can hold on ext4 (and the FAT long-name limit is lower).
pub const NAME_MAX: usize = 255;

/// Split an absolute path into its components, resolving `.` and `..` lexically.
///
/// Refuses relative paths, NUL bytes, over-long names and any `..` that would climb above the
/// partition's root.
pub fn components(path: &str) -> Result<Vec<&str>, FsError> {
    let invalid = |reason| FsError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("paths inside a partition must be absolute"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(invalid("`..` climbs above the partition's root"));
                }
            }
            name if name.len() > NAME_MAX => {
                return Err(invalid("a name is longer than 255 bytes"));
            }
            name => out.push(name),
        }
    }
    Ok(out)
}

/// Split into (parent components, final name); the root itself has no name and is refused.
pub fn parent_and_name(path: &str) -> Result<(Vec<&str>, &str), FsError> {
    let mut parts = components(path)?;
    match parts.pop() {
        Some(name) => Ok((parts, name)),
        None => Err(FsError::InvalidPath {
            path: path.to_string(),
            reason: "names the partition's root directory",
        }),
    }
}

/// Turn raw path bytes (e.g. from the command line) into a path, refusing non-UTF-8.
pub fn from_bytes(raw: &[u8]) -> Result<&str, FsError> {
    std::str::from_utf8(raw).map_err(|_| FsError::InvalidPath {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason: "is not valid UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses_escapes() {
        assert_eq!(components("/etc//ssh/./x").unwrap(), ["etc", "ssh", "x"]);
        assert_eq!(components("/etc/../usr").unwrap(), ["usr"]);
        assert!(components("/../etc").is_err());
        assert!(components("/etc/../../x").is_err());
        assert!(components("etc/passwd").is_err());
        assert!(components("/a\0b").is_err());
        assert!(components(&format!("/{}", "x".repeat(256))).is_err());
        assert!(parent_and_name("/").is_err());
        assert!(from_bytes(b"/etc/\xff").is_err());
    }
}
