//! A one-way, node-wide flag (drain, close) that sessions both await and read on their hot
//! path. A `CancellationToken` alone takes a mutex to answer `is_cancelled` and to poll its
//! future, and every session's loop would ask once per delivered frame.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Fired once, never reset.
#[derive(Debug, Default)]
pub struct Signal {
    token: CancellationToken,
    fired: AtomicBool,
}

impl Signal {
    /// An unfired signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires it: every waiter wakes, and [`Signal::is_fired`] is true from now on.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it has fired: one atomic load.
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once it has fired.
    pub fn fired(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fire_wakes_waiters_and_sets_the_flag() {
        let signal = std::sync::Arc::new(Signal::new());
        assert!(!signal.is_fired());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.fired().await }
        });
        tokio::task::yield_now().await;
        signal.fire();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .expect("the waiter finished");
        assert!(signal.is_fired());
        // Awaiting after the fact completes at once.
        signal.fired().await;
    }
}
