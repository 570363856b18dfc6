//! Byte-range algebra for free-space maps: merge, complement, subtract, intersect.

use std::ops::Range;

/// Sort and merge overlapping or touching ranges; drop empty ones.
pub fn normalize(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `[0, len)` minus the normalized ranges `holes`.
pub fn complement(holes: Vec<Range<u64>>, len: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for h in holes {
        let h = h.start.min(len)..h.end.min(len);
        if h.start > at {
            out.push(at..h.start);
        }
        at = at.max(h.end);
    }
    if at < len {
        out.push(at..len);
    }
    out
}

/// `a` minus `b`, both normalized.
pub fn subtract(a: Vec<Range<u64>>, b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut start = r.start;
        while j < b.len() && b[j].end <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            if b[k].start > start {
                out.push(start..b[k].start);
            }
            start = start.max(b[k].end);
            k += 1;
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

/// The bytes in both `a` and `b`, both normalized.
pub fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if lo < hi {
            out.push(lo..hi);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        assert_eq!(
            normalize(vec![5..7, 0..2, 2..3, 6..9, 4..4]),
            vec![0..3, 5..9]
        );
        assert_eq!(complement(vec![0..3, 5..9], 12), vec![3..5, 9..12]);
        let one: Vec<Range<u64>> = std::iter::once(2..20).collect();
        assert_eq!(
            complement(one, 12),
            std::iter::once(0..2).collect::<Vec<_>>()
        );
        assert_eq!(
            subtract(vec![0..10, 20..30], &[2..3, 8..22, 29..40]),
            vec![0..2, 3..8, 22..29]
        );
        assert_eq!(
            intersect(&[0..10, 20..30], &[2..3, 8..22, 29..40]),
            vec![2..3, 8..10, 20..22, 29..30]
        );
        let (a, b): (Vec<Range<u64>>, Vec<Range<u64>>) = (vec![0..5, 7..8], vec![5..7, 9..9]);
        assert!(intersect(&a, &b).is_empty());
    }
}
