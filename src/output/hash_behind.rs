//! SHA-256 on a helper thread, so hashing the raw image overlaps with compressing or writing
//! it instead of adding to it (hashing costs about as much CPU as zstd on a mostly empty image).

use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Buffers in flight: one being filled, one being hashed, one queued.
const POOL: usize = 3;

/// Hands out buffers and takes filled ones to hash, in order.
pub(crate) struct Feeder {
    free: mpsc::Receiver<Vec<u8>>,
    to_hash: Option<mpsc::SyncSender<(Vec<u8>, usize)>>,
}

impl Feeder {
    /// A buffer to fill (waits while every buffer is still being hashed).
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        // The hasher only stops after `to_hash` is dropped, which happens after the last call.
        self.free.recv().unwrap_or_default()
    }

    /// Hash the first `n` bytes of `buf`; the buffer comes back through [`Feeder::buffer`].
    pub(crate) fn hash(&mut self, buf: Vec<u8>, n: usize) {
        if let Some(tx) = &self.to_hash {
            let _ = tx.send((buf, n));
        }
    }
}

/// Run `f` with a [`Feeder`] of `step`-byte buffers; returns its result and the SHA-256 (hex) of
/// everything it passed to [`Feeder::hash`], in order.
pub(crate) fn with_background_hash<T, E>(
    step: usize,
    f: impl FnOnce(&mut Feeder) -> Result<T, E>,
) -> Result<(T, String), E> {
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let (hash_tx, hash_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(POOL);
    for _ in 0..POOL {
        let _ = free_tx.send(vec![0u8; step]);
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut sha = Sha256::new();
            for (buf, n) in hash_rx {
                sha.update(&buf[..n]);
                // The feeder may be gone already (it failed); the buffer is then dropped.
                let _ = free_tx.send(buf);
            }
            hex::encode(sha.finalize())
        });
        let mut feeder = Feeder {
            free: free_rx,
            to_hash: Some(hash_tx),
        };
        let result = f(&mut feeder);
        feeder.to_hash = None;
        let sha = hasher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.map(|t| (t, sha))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_was_fed_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let ((), sha) = with_background_hash(4096, |feed| {
            for piece in data.chunks(3000) {
                let mut buf = feed.buffer();
                buf[..piece.len()].copy_from_slice(piece);
                feed.hash(buf, piece.len());
            }
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn an_error_stops_cleanly() {
        let r: Result<((), String), &str> = with_background_hash(16, |feed| {
            let b = feed.buffer();
            feed.hash(b, 16);
            Err("stopped")
        });
        assert_eq!(r.unwrap_err(), "stopped");
    }
}
