//! The exporter's bounded queue and its back-off: pure logic, so the
//! policies (what is dropped when full, how long a retry waits) are tested
//! without a collector.

use std::{collections::VecDeque, time::Duration};

/// Records waiting for a request. Full means the collector has been away
/// (or slow) for longer than the queue lasts: the oldest records go first,
/// since a collector that comes back is more useful with what is recent.
pub struct Queue<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Queue<T> {
    pub fn new(cap: usize) -> Queue<T> {
        Queue {
            items: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Appends; returns how many records were dropped to make room (0 or 1).
    pub fn push(&mut self, item: T) -> u64 {
        let dropped = if self.items.len() >= self.cap {
            self.items.pop_front();
            1
        } else {
            0
        };
        self.items.push_back(item);
        dropped
    }

    /// Up to `n` of the oldest records.
    pub fn take(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.items.len());
        self.items.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Exponential back-off between attempts at one batch, reset by a success.
/// A collector's `Retry-After` wins over the doubling (it knows when it
/// will be back), within the same ceiling so a bogus value cannot park the
/// exporter for hours.
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    pub fn delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = retry_after.unwrap_or(self.next).min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_so() {
        let mut q = Queue::new(3);
        let dropped: u64 = (0..5).map(|i| q.push(i)).sum();
        assert_eq!(dropped, 2);
        assert_eq!(q.len(), 3);
        assert_eq!(q.take(2), [2, 3]);
        assert_eq!(q.take(10), [4]);
        assert!(q.is_empty());
        assert!(q.take(1).is_empty());
        // A zero capacity still holds the newest record.
        let mut q = Queue::new(0);
        assert_eq!(q.push(1) + q.push(2), 1);
        assert_eq!(q.take(5), [2]);
    }

    #[test]
    fn back_off_doubles_to_a_ceiling_honours_retry_after_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(30_000));
        let seq: Vec<u128> = (0..8).map(|_| b.delay(None).as_millis()).collect();
        assert_eq!(seq, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        b.reset();
        assert_eq!(b.delay(None), ms(500));
        assert_eq!(b.delay(Some(ms(7000))), ms(7000));
        // The doubling went on underneath.
        assert_eq!(b.delay(None), ms(2000));
        assert_eq!(b.delay(Some(Duration::from_secs(3600))), ms(30_000));
    }
}
