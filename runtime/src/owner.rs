//! Owner threads: llama.cpp, ONNX Runtime and SQLite each live on one thread that owns them,
//! fed by a bounded channel. A thread ends when the last handle (sender) is dropped; at
//! shutdown the daemon drops its handles and [`OwnerThread::join`]s each thread within a
//! deadline, so that work already acknowledged (a cache write) is finished, not cut off.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The join handle of an owner thread, shared by every clone of its handle: whoever shuts
/// the daemon down takes it.
#[derive(Clone, Debug)]
pub struct OwnerThread {
    name: &'static str,
    handle: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl OwnerThread {
    /// Wraps a started thread.
    pub fn new(name: &'static str, handle: JoinHandle<()>) -> Self {
        Self { name, handle: Arc::new(Mutex::new(Some(handle))) }
    }

    /// Waits for the thread to end, at most `timeout`, without blocking the async runtime;
    /// `true` if it ended (or was joined before). Every sender to the thread must have been
    /// dropped for it to end.
    pub async fn join(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let finished = {
                let guard = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
                guard.as_ref().is_none_or(JoinHandle::is_finished)
            };
            if finished {
                let handle = self.handle.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(handle) = handle {
                    if handle.join().is_err() {
                        tracing::error!(thread = self.name, "owner thread panicked");
                    }
                }
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(thread = self.name, ?timeout, "owner thread did not end in time");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
