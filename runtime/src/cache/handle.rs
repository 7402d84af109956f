//! The async handle and the owner thread that holds the SQLite connection and the index.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::clock::Clock;
use super::schema::OpenMode;
use super::store::{Row, Store};
use super::{
    CacheConfig, CacheError, CounterCells, Counters, Hit, NewEntry, Query, ReadMode, Stats, StoreOutcome,
};

/// Hits whose recency is written in one transaction.
pub(crate) const TOUCH_BATCH: usize = 64;
/// Jobs waiting for the cache thread; beyond it lookups and stores fail with
/// [`CacheError::QueueFull`] (the caller generates as if there were no cache).
const QUEUE: usize = 256;
/// Pending hits are written after this long without a job.
const IDLE_FLUSH: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, CacheError>>;

enum Job {
    Lookup { query: Query, mode: ReadMode, reply: Reply<Option<Hit>> },
    Store { entry: NewEntry, reply: Reply<StoreOutcome> },
    Stats { reply: Reply<Stats> },
    Clear { older_than: Option<Duration>, reply: Reply<u64> },
}

/// Handle to the cache's owner thread; cheap to clone. The thread ends (writing pending hits)
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Cache {
    jobs: crossbeam_channel::Sender<Job>,
    config: Arc<CacheConfig>,
    counters: Arc<CounterCells>,
    /// The owner thread, joined at shutdown.
    thread: crate::owner::OwnerThread,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.config.path).finish()
    }
}

impl Cache {
    /// Opens the file (creating it, running migrations), loads the semantic entries into the
    /// index and starts the owner thread. Blocking: call it before serving or in
    /// `spawn_blocking`. `space` names the embedding model (e.g. the router's
    /// `name@version`): embeddings written under another one are dropped.
    pub fn open(config: &CacheConfig, space: Option<&str>) -> Result<Self, CacheError> {
        Self::open_with_clock(config, space, Clock::system())
    }

    /// [`Cache::open`] with a given clock (tests set it to expire entries).
    pub fn open_with_clock(
        config: &CacheConfig,
        space: Option<&str>,
        clock: Clock,
    ) -> Result<Self, CacheError> {
        if !config.enabled {
            return Err(CacheError::Disabled);
        }
        let store = Store::open(config, clock, space, OpenMode::Create, true)?;
        let counters = Arc::clone(&store.counters);
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("outpost-cache".into())
            .spawn(move || run(store, &rx))
            .map_err(|e| CacheError::Open {
                path: config.path.clone(),
                reason: format!("cannot start the cache thread: {e}"),
            })?;
        let thread = crate::owner::OwnerThread::new("cache", thread);
        Ok(Self { jobs, config: Arc::new(config.clone()), counters, thread })
    }

    fn send<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, CacheError>>, CacheError> {
        let (reply, rx) = oneshot::channel();
        self.jobs.try_send(job(reply)).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => CacheError::QueueFull,
            crossbeam_channel::TrySendError::Disconnected(_) => CacheError::Stopped,
        })?;
        Ok(rx)
    }

    /// The owner thread (it ends, writing pending hits, once every handle is dropped).
    pub fn thread(&self) -> crate::owner::OwnerThread {
        self.thread.clone()
    }

    /// The best hit for a request under `mode` (see [`super::read_mode`]): an exact hit, else
    /// (with [`ReadMode::Semantic`], a single-turn request and an embedding) the most similar
    /// cached prompt at or above `cache.similarity` that passes the [`super::guard`].
    pub async fn lookup(&self, query: Query, mode: ReadMode) -> Result<Option<Hit>, CacheError> {
        if mode == ReadMode::Off {
            return Ok(None);
        }
        let rx = self.send(|reply| Job::Lookup { query, mode, reply })?;
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// Keeps an answer, if it passes the gates (confidence, privacy, size); `Ok(Stored)` once
    /// the entry is durable. Run it off the response path (`tokio::spawn`): it waits for an
    /// fsync.
    pub async fn store(&self, entry: NewEntry) -> Result<StoreOutcome, CacheError> {
        if let Some(outcome) = self.gate(&entry) {
            CounterCells::add(&self.counters.not_stored, 1);
            return Ok(outcome);
        }
        let rx = self.send(|reply| Job::Store { entry, reply })?;
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// Why an entry is not stored, if it is not.
    fn gate(&self, entry: &NewEntry) -> Option<StoreOutcome> {
        let c = &self.config;
        if entry.answer.trim().is_empty() {
            Some(StoreOutcome::Empty)
        } else if entry.confidence.is_nan() || entry.confidence < c.min_confidence {
            Some(StoreOutcome::BelowConfidence)
        } else if entry.private && !c.store_private {
            Some(StoreOutcome::Private)
        } else if (entry.query.prompt_text().len() + entry.answer.len()) as u64 > c.max_bytes {
            Some(StoreOutcome::TooLarge)
        } else {
            None
        }
    }

    /// The cache's state, with the counts since it was opened.
    pub async fn stats(&self) -> Result<Stats, CacheError> {
        let rx = self.send(|reply| Job::Stats { reply })?;
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// Removes every entry, or those stored more than `older_than` ago; returns how many.
    pub async fn clear(&self, older_than: Option<Duration>) -> Result<u64, CacheError> {
        let rx = self.send(|reply| Job::Clear { older_than, reply })?;
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// The counts since the cache was opened (lock-free, for `/metrics`).
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }
}

fn run(mut store: Store, rx: &crossbeam_channel::Receiver<Job>) {
    loop {
        let job = match rx.recv_timeout(IDLE_FLUSH) {
            Ok(job) => job,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Err(e) = store.flush_touches() {
                    tracing::warn!(error = %e, "cache: cannot write the recency of hits");
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        match job {
            Job::Lookup { query, mode, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = store.lookup(&query, mode);
                if result.is_err() {
                    CounterCells::add(&store.counters.errors, 1);
                }
                let _ = reply.send(result);
                // While jobs wait, the write waits (up to a cap): it is not worth their latency.
                let pending = store.pending_touches();
                if pending >= TOUCH_BATCH && (rx.is_empty() || pending >= 16 * TOUCH_BATCH) {
                    if let Err(e) = store.flush_touches() {
                        tracing::warn!(error = %e, "cache: cannot write the recency of hits");
                    }
                }
            }
            Job::Store { entry, reply } => {
                let _ = reply.send(store_one(&mut store, &entry));
            }
            Job::Stats { reply } => {
                let _ = reply.send(store.stats().map_err(|e| CacheError::Stats(e.to_string())));
            }
            Job::Clear { older_than, reply } => {
                let _ = reply.send(store.clear(older_than).map_err(|e| CacheError::Clear(e.to_string())));
            }
        }
    }
    // Dropping the store writes the pending hits.
}

fn store_one(store: &mut Store, entry: &NewEntry) -> Result<StoreOutcome, CacheError> {
    let ttl_ms = store.config().ttl_ms();
    let row = Row {
        query: &entry.query,
        answer: &entry.answer,
        model: &entry.model,
        origin: entry.origin,
        confidence: entry.confidence,
        ttl_ms,
    };
    match store.insert(&[row]) {
        Ok(inserted) => {
            CounterCells::add(&store.counters.stored, 1);
            let id = inserted.ids.first().copied().unwrap_or(-1);
            Ok(StoreOutcome::Stored { id, evicted: inserted.evicted })
        }
        Err(e) => {
            CounterCells::add(&store.counters.errors, 1);
            Err(CacheError::Store(e.to_string()))
        }
    }
}
