//! The batching exporter every wasmesh telemetry export uses (spans now, access logs next): a
//! bounded queue of items, flushed on the root's ticks in batches, one request in flight at a
//! time, retried with exponential backoff up to a cap, and counters for what was exported,
//! dropped and failed (the adapter turns them into Envoy metrics).
//!
//! Nothing here waits: a request only [`Exporter::push`]es (a full queue drops the item and
//! counts it), so a dead or slow collector never delays or fails a request.

use std::collections::VecDeque;

/// Tuning of one exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most items waiting (the named bound); more are dropped and counted.
    pub max_queue: usize,
    /// Most items in one request.
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    pub flush_period_ms: u64,
    /// First retry delay; doubled after each failure up to [`Settings::max_backoff_ms`].
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Attempts per batch before it is given up (counted as failed).
    pub max_attempts: u32,
}

impl Settings {
    /// wasmesh's defaults (the OpenTelemetry SDK's batch processor: queue 2048, batch 512,
    /// 5 s; here flushed every second so a trace shows up promptly).
    pub const DEFAULT: Settings = Settings {
        max_queue: 2048,
        batch_size: 512,
        flush_period_ms: 1000,
        initial_backoff_ms: 500,
        max_backoff_ms: 30_000,
        max_attempts: 5,
    };
}

/// Counts since the exporter started (monotonic; the adapter flushes the deltas to counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Items the collector accepted.
    pub exported: u64,
    /// Items dropped because the queue was full.
    pub dropped: u64,
    /// Items given up after [`Settings::max_attempts`] failed sends.
    pub failed: u64,
    /// Failed sends (each attempt).
    pub send_errors: u64,
}

/// An encoded batch waiting to be (re)sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub body: Vec<u8>,
    pub items: usize,
    pub attempts: u32,
}

/// The exporter state. `T` is one queued item (a span, a log record).
#[derive(Debug)]
pub struct Exporter<T> {
    settings: Settings,
    queue: VecDeque<T>,
    /// The batch being sent or waiting for its retry.
    current: Option<Payload>,
    in_flight: bool,
    /// No send before this time (backoff).
    not_before_ms: u64,
    last_flush_ms: u64,
    counts: Counts,
}

impl<T> Exporter<T> {
    pub fn new(settings: Settings) -> Exporter<T> {
        Exporter {
            settings,
            queue: VecDeque::new(),
            current: None,
            in_flight: false,
            not_before_ms: 0,
            last_flush_ms: 0,
            counts: Counts::default(),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Queues an item; `false` (and counted as dropped) when the queue is full.
    pub fn push(&mut self, item: T) -> bool {
        if self.queue.len() >= self.settings.max_queue {
            self.counts.dropped += 1;
            return false;
        }
        self.queue.push_back(item);
        true
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether there is work for a tick.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty() || self.current.is_some()
    }

    /// On a tick at `now_ms`: the payload to send now, if any (a retry, a full batch, or a partial
    /// batch whose flush period passed; `force` sends a partial batch at once, when the VM stops).
    /// The caller sends it and reports with [`Exporter::sent`].
    pub fn poll(&mut self, now_ms: u64, force: bool, encode: impl FnOnce(&[T]) -> Vec<u8>) -> Option<&Payload> {
        if self.in_flight || now_ms < self.not_before_ms {
            return None;
        }
        if self.current.is_none() {
            let due = force
                || self.queue.len() >= self.settings.batch_size
                || now_ms.saturating_sub(self.last_flush_ms) >= self.settings.flush_period_ms;
            if self.queue.is_empty() || !due {
                return None;
            }
            let n = self.queue.len().min(self.settings.batch_size.max(1));
            let batch: Vec<T> = self.queue.drain(..n).collect();
            self.last_flush_ms = now_ms;
            self.current = Some(Payload { body: encode(&batch), items: batch.len(), attempts: 0 });
        }
        self.in_flight = true;
        let p = self.current.as_mut()?;
        p.attempts += 1;
        Some(p)
    }

    /// The send of the current payload could not start (no cluster, host refused): as a failure.
    pub fn not_sent(&mut self, now_ms: u64) {
        self.finished(false, now_ms);
    }

    /// The collector answered (`ok`: a 2xx) or the call failed.
    pub fn finished(&mut self, ok: bool, now_ms: u64) {
        self.in_flight = false;
        let Some(p) = self.current.take() else { return };
        if ok {
            self.counts.exported += p.items as u64;
            self.not_before_ms = 0;
            return;
        }
        self.counts.send_errors += 1;
        if p.attempts >= self.settings.max_attempts {
            self.counts.failed += p.items as u64;
            self.not_before_ms = 0;
            return;
        }
        let shift = p.attempts.saturating_sub(1).min(20);
        let delay = self.settings.initial_backoff_ms.saturating_mul(1 << shift).min(self.settings.max_backoff_ms);
        self.not_before_ms = now_ms.saturating_add(delay);
        self.current = Some(p);
    }

    /// The next time a retry may go (for tests and logs).
    pub fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_queue: 4,
            batch_size: 2,
            flush_period_ms: 100,
            initial_backoff_ms: 10,
            max_backoff_ms: 25,
            max_attempts: 3,
        }
    }

    fn enc(items: &[u32]) -> Vec<u8> {
        items.iter().map(|i| *i as u8).collect()
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut e = Exporter::new(settings());
        for i in 0..6 {
            e.push(i);
        }
        assert_eq!(e.queued(), 4);
        assert_eq!(e.counts().dropped, 2);
    }

    #[test]
    fn batches_go_when_full_or_when_the_period_passes() {
        let mut e = Exporter::new(settings());
        e.push(1u32);
        assert!(e.poll(50, false, enc).is_none(), "partial batch before the period");
        e.push(2);
        assert_eq!(e.poll(60, false, enc).map(|p| p.body.clone()), Some(vec![1, 2]));
        assert!(e.poll(61, false, enc).is_none(), "one in flight");
        e.finished(true, 62);
        assert_eq!(e.counts().exported, 2);
        e.push(3);
        assert!(e.poll(100, false, enc).is_none());
        assert_eq!(e.poll(160, false, enc).map(|p| p.items), Some(1));
        e.finished(true, 161);
        e.push(4);
        assert!(e.poll(162, true, enc).is_some(), "forced at VM stop");
    }

    #[test]
    fn retries_back_off_exponentially_to_a_cap_then_give_up() {
        let mut e = Exporter::new(settings());
        e.push(1u32);
        e.push(2);
        assert!(e.poll(0, false, enc).is_some());
        e.finished(false, 0);
        assert_eq!(e.not_before_ms(), 10);
        assert!(e.poll(5, false, enc).is_none(), "backing off");
        assert_eq!(e.poll(10, false, enc).map(|p| p.attempts), Some(2));
        e.finished(false, 10);
        assert_eq!(e.not_before_ms(), 30, "20 ms: under the 25 ms cap");
        assert!(e.poll(35, false, enc).is_some());
        e.finished(false, 35);
        assert_eq!(e.counts().failed, 2);
        assert_eq!(e.counts().send_errors, 3);
        assert!(!e.busy());
    }
}
