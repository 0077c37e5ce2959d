//! Reads started ahead of their reader, several at once, taken in the order
//! they were started: a reader that walks segments one after another on an
//! object store then waits about one round trip per batch of them, not one
//! per segment. What is in flight is bounded twice: at most
//! [`FetchAhead::MOST`] reads started and not yet taken, and the bytes they
//! are expected to hold at most [`FetchAhead::BUDGET`] (a single read
//! larger than that still runs, alone).

use crate::Error;
use std::collections::VecDeque;
use std::future::Future;
use tokio::task::JoinHandle;

/// Reads in flight, in the order they were started.
pub struct FetchAhead<T: Send + 'static> {
    pending: VecDeque<(u64, JoinHandle<Result<T, Error>>)>,
    bytes: u64,
}

impl<T: Send + 'static> std::fmt::Debug for FetchAhead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchAhead")
            .field("in_flight", &self.pending.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<T: Send + 'static> Default for FetchAhead<T> {
    fn default() -> Self {
        FetchAhead {
            pending: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T: Send + 'static> FetchAhead<T> {
    /// Reads started and not yet taken, at most.
    pub const MOST: usize = 32;
    /// Bytes those are expected to hold, at most.
    pub const BUDGET: u64 = 32 << 20;

    /// Starts the reads of `upcoming` (each with the bytes it is expected
    /// to hold) there is room for, then takes the earliest one's result:
    /// `None` once every read is taken. Must be called on the runtime.
    pub async fn next_of<F>(
        &mut self,
        upcoming: &mut std::iter::Peekable<impl Iterator<Item = (u64, F)>>,
    ) -> Option<Result<T, Error>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        while upcoming.peek().is_some_and(|(bytes, _)| self.has_room(*bytes)) {
            if let Some((bytes, read)) = upcoming.next() {
                self.start(bytes, read);
            }
        }
        self.next().await
    }

    /// Whether a read expected to hold `bytes` may start now.
    fn has_room(&self, bytes: u64) -> bool {
        self.pending.is_empty() || (self.pending.len() < Self::MOST && self.bytes + bytes <= Self::BUDGET)
    }

    /// Starts `read` (expected to hold `bytes`) on a task of its own.
    fn start(&mut self, bytes: u64, read: impl Future<Output = Result<T, Error>> + Send + 'static) {
        self.bytes += bytes;
        self.pending.push_back((bytes, tokio::spawn(read)));
    }

    /// The result of the earliest read started and not yet taken; `None`
    /// when none is.
    async fn next(&mut self) -> Option<Result<T, Error>> {
        let (bytes, task) = self.pending.pop_front()?;
        self.bytes -= bytes;
        Some(
            task.await
                .map_err(|e| Error::Protocol(format!("a read of the archive failed: {e}")))
                .and_then(|r| r),
        )
    }
}

impl<T: Send + 'static> Drop for FetchAhead<T> {
    /// Reads never taken are stopped.
    fn drop(&mut self) {
        for (_, task) in &self.pending {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Starts reads `0..n` each expected to hold `bytes`, as a reader does:
    /// as many as there is room for, then takes the earliest. Returns what
    /// it took, in order, and the most that ran at once.
    async fn walk(n: usize, bytes: u64) -> (Vec<usize>, usize) {
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut ahead = FetchAhead::default();
        let mut upcoming = (0..n)
            .map(|i| {
                let (running, most) = (running.clone(), most.clone());
                (bytes, async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Later reads finish first: order comes from the taking.
                    tokio::time::sleep(std::time::Duration::from_millis(20 - (i % 20) as u64)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                })
            })
            .peekable();
        let mut took = Vec::new();
        while let Some(got) = ahead.next_of(&mut upcoming).await {
            took.push(got.expect("read"));
        }
        (took, most.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn reads_run_several_at_once_within_both_bounds_and_are_taken_in_order() {
        let (took, most) = walk(100, 1 << 10).await;
        assert_eq!(took, (0..100).collect::<Vec<_>>());
        assert!(most > 1 && most <= FetchAhead::<usize>::MOST, "{most} at once");
        // Large reads: as many as the bytes allow.
        let (took, most) = walk(20, 8 << 20).await;
        assert_eq!(took, (0..20).collect::<Vec<_>>());
        assert!(most > 1 && most <= 4, "{most} reads of 8 MiB at once");
        // One read larger than the budget still runs, alone.
        let (took, most) = walk(3, 64 << 20).await;
        assert_eq!((took, most), (vec![0, 1, 2], 1));
    }

    #[tokio::test]
    async fn a_read_that_fails_is_taken_as_its_error_and_reads_never_taken_stop() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut ahead = FetchAhead::default();
        ahead.start(1, async { Err::<(), _>(Error::Protocol("no such object".into())) });
        for _ in 0..3 {
            let done = done.clone();
            ahead.start(1, async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        let first = ahead.next().await.expect("the first read");
        assert!(matches!(first, Err(Error::Protocol(m)) if m == "no such object"));
        drop(ahead);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(done.load(Ordering::SeqCst), 0, "reads never taken went on");
    }
}
