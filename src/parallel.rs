//! Work on many items in parallel, delivered in order, with memory bounded: at most a window of
//! results exists at a time however fast the workers are.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};

/// Run `work` on items `0..n` on `threads` workers and hand the results to `deliver` in order.
///
/// Workers run at most `threads + 1` items ahead of delivery (counting the one being delivered),
/// so memory stays bounded however fast they are; the first error, from either side, stops
/// everything and is returned.
pub fn in_order<T, E>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T, E> + Sync,
    mut deliver: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    E: Send,
{
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        for i in 0..n {
            deliver(i, work(i)?)?;
        }
        return Ok(());
    }
    let window = threads + 1;
    let gate = Gate {
        state: Mutex::new(GateState {
            next: 0,
            delivered: 0,
            stop: false,
        }),
        moved: Condvar::new(),
    };
    let (tx, rx) = mpsc::channel::<(usize, Result<T, E>)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (gate, work) = (&gate, &work);
            s.spawn(move || {
                // A panicking worker never sends its item; stopping the others lets every sender
                // go, so the receiving loop below ends instead of waiting for it forever.
                let _stop = StopOnPanic(gate);
                while let Some(i) = gate.take(n, window) {
                    if tx.send((i, work(i))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Wakes every waiting worker on any way out of here, a panic in `deliver` included, so
        // the scope can join them.
        let _stop = StopOnDrop(&gate);
        let mut early = BTreeMap::new();
        for want in 0..n {
            let result = loop {
                if let Some(r) = early.remove(&want) {
                    break r;
                }
                match rx.recv() {
                    Ok((i, r)) => {
                        early.insert(i, r);
                    }
                    // Every worker is gone without sending `want`: one panicked, and the scope
                    // re-raises that panic once this closure returns.
                    Err(_) => return Ok(()),
                }
            };
            deliver(want, result?)?;
            gate.delivered(want + 1);
        }
        Ok(())
    })
}

struct GateState {
    next: usize,
    delivered: usize,
    stop: bool,
}

/// Hands out item numbers to workers, never more than a window ahead of delivery.
struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Only plain counters live behind the lock; they stay meaningful after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next item to work on, waiting while the window is full; `None` when done or stopped.
    fn take(&self, n: usize, window: usize) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.stop || st.next >= n {
                return None;
            }
            if st.next < st.delivered + window {
                st.next += 1;
                return Some(st.next - 1);
            }
            st = self.moved.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn delivered(&self, count: usize) {
        self.lock().delivered = count;
        self.moved.notify_all();
    }
}

impl Gate {
    fn stop(&self) {
        self.lock().stop = true;
        self.moved.notify_all();
    }
}

struct StopOnDrop<'a>(&'a Gate);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

struct StopOnPanic<'a>(&'a Gate);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn in_order_never_holds_more_than_threads_plus_one_results() {
        for threads in [1, 2, 4] {
            let alive = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let mut got = Vec::new();
            in_order(
                50,
                threads,
                |i| {
                    let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Uneven work, so late items often finish first.
                    std::thread::sleep(std::time::Duration::from_micros(
                        ((i * 7) % 5) as u64 * 300,
                    ));
                    Ok::<usize, ()>(i)
                },
                |i, v| {
                    assert_eq!(i, v);
                    got.push(v);
                    alive.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(got, (0..50).collect::<Vec<_>>());
            assert!(
                peak.load(Ordering::SeqCst) <= threads + 1,
                "threads {threads}"
            );
        }
        let e = in_order(
            20,
            3,
            |i| if i == 7 { Err(i) } else { Ok(i) },
            |_, _| Ok(()),
        );
        assert_eq!(e, Err(7));
    }

    #[test]
    fn a_panicking_worker_panics_the_caller_instead_of_hanging_it() {
        let run = || {
            in_order(
                50,
                2,
                |i| {
                    assert!(i != 3, "worker fails on purpose");
                    Ok::<usize, ()>(i)
                },
                |_, _| Ok(()),
            )
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(std::panic::catch_unwind(run).is_err()));
        let panicked = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("in_order hung after a worker panicked");
        assert!(panicked);
    }
}
