//! `outpost serve`: the supervised daemon.
//!
//! Order of start-up, as systemd should see it: bind the socket (final mode and group), start
//! answering `/healthz` and `/readyz` (503 while loading), load the model, then `READY=1`.
//! SIGTERM/SIGINT: `STOPPING=1`, stop accepting, let in-flight requests finish within
//! `api.shutdown_timeout`, cancel what is left, exit 0.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_common::notify;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, socket, AppState};
use crate::config::Config;
use crate::engine::{Engine, LoadError};
use crate::metrics::Metrics;

/// How long cancelled generations get to wind down after the shutdown deadline.
const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// How long background work (cache writes, the power monitor, the probe, the watchdog) and the
/// owner threads get to finish once the requests are done.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The model could not be loaded at start-up.
    #[error("cannot load the model: {0}")]
    Load(#[from] LoadError),
    /// The cloud client could not be set up (its key or CA file).
    #[error("cannot set up the cloud client: {0}")]
    Cloud(#[from] crate::cloud::CloudError),
    /// The fleet agent could not be set up (its TLS files, password or state directory).
    #[error("cannot set up fleet control: {0}")]
    Fleet(#[from] outpost_common::mqtt::MqttError),
    /// The model, as configured, does not fit the memory this process may use.
    #[error(transparent)]
    Memory(#[from] crate::board::DoesNotFit),
    /// The engine thread or a signal handler could not start.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What failed to start.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn status(text: &str) {
    notify::status(text);
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), ServeError> {
    if !config.model.allow_overcommit {
        crate::board::fit::check(&config, &crate::board::fit::sysroot())?;
    }
    let config = Arc::new(config);
    let socket_path: PathBuf = config.api.socket.clone();
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|source| ServeError::Start { what: "signal handler", source })?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|source| ServeError::Start { what: "signal handler", source })?;

    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(&config, metrics.clone())
        .map_err(|source| ServeError::Start { what: "engine thread", source })?;

    let shutdown = CancellationToken::new();
    // Every background task; awaited (with DRAIN) after the server stops.
    let tasks = TaskTracker::new();
    let cloud = crate::cloud::Cloud::new(&config.cloud, metrics.clone())?;
    metrics.set_connectivity(cloud.connectivity());
    let power = crate::power::spawn_monitor(config.power.clone(), metrics.clone(), shutdown.clone(), &tasks);
    let (router, router_error) = if config.router.enabled {
        status("loading the router");
        let router_config = config.router.clone();
        let router_metrics = metrics.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || {
            crate::router::Router::start(&router_config, router_metrics)
        })
        .await
        {
            Ok(Ok(router)) => {
                let info = router.info();
                tracing::info!(name = %info.name, version = %info.version, dir = %info.dir.display(),
                    ms = started.elapsed().as_millis() as u64, "router loaded");
                (Some(router), None)
            }
            Ok(Err(err)) => {
                // Local answers do not need the router: serve without it, and say so.
                tracing::error!(%err, "router not loaded; every request is routed without a complexity");
                (None, Some(err.to_string()))
            }
            Err(err) => (None, Some(format!("router thread failed: {err}"))),
        }
    } else {
        (None, None)
    };
    let router_threshold = router.as_ref().map_or(0.5, |r| r.info().default_threshold);
    let cache = if config.cache.enabled {
        status(&format!("opening the cache {}", config.cache.path.display()));
        let cache_config = config.cache.clone();
        let space =
            router.as_ref().map(|r| crate::cache::ops::embedding_space(&r.info().name, &r.info().version));
        match tokio::task::spawn_blocking(move || crate::cache::Cache::open(&cache_config, space.as_deref()))
            .await
        {
            Ok(Ok(cache)) => Some(cache),
            Ok(Err(err)) => {
                // Answering does not need the cache: serve without it, and say so.
                tracing::error!(%err, "response cache not opened; serving without it");
                None
            }
            Err(err) => {
                tracing::error!(%err, "cache thread failed; serving without a cache");
                None
            }
        }
    } else {
        None
    };

    status(&format!("binding {}", socket_path.display()));
    let listener = socket::bind(&socket_path, config.api.group.as_deref())?;
    let state = AppState {
        engine: engine.clone(),
        config: config.clone(),
        metrics,
        admin_uids: Arc::new(config.api.admin_uids.iter().copied().collect::<HashSet<_>>()),
        shutdown: shutdown.clone(),
        router,
        router_error,
        router_threshold,
        cloud: cloud.clone(),
        power,
        cache,
        tasks: tasks.clone(),
        fleet: Arc::default(),
    };
    let mut threads = vec![engine.thread()];
    threads.extend(state.router.as_ref().map(crate::router::Router::thread));
    threads.extend(state.cache.as_ref().map(crate::cache::Cache::thread));
    if cloud.is_configured() {
        let probe = cloud.spawn_probe(shutdown.clone());
        tasks.spawn(async move {
            let _ = probe.await;
        });
    }
    // Fleet control: never waits for the broker; an unreachable one only shows in the status.
    let fleet = crate::fleet::start(&state, &tasks, shutdown.clone())?;
    if let Some(agent) = &fleet {
        let _ = state.fleet.set(agent.watch_connection());
    }
    let app = api::router(state).into_make_service_with_connect_info::<socket::Peer>();
    let stop_accepting = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(stop_accepting.cancelled_owned()).await
    });
    tracing::info!(socket = %socket_path.display(), "listening");

    status(&format!("loading model {}", config.model.path.display()));
    let load = tokio::select! {
        loaded = engine.load() => Some(loaded),
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    let info = match load {
        Some(Ok(info)) => info,
        Some(Err(err)) => {
            status(&format!("failed: {err}"));
            shutdown.cancel();
            socket::remove(&socket_path);
            return Err(err.into());
        }
        None => {
            notify::stopping("stopping");
            shutdown.cancel();
            socket::remove(&socket_path);
            return Ok(());
        }
    };
    tracing::info!(model = %info.id, file = %info.file.display(), quantization = %info.quantization, "model loaded");
    let serving = format!(
        "serving {} ({}, {} tokens of context) on {}",
        info.id,
        info.quantization,
        info.context,
        socket_path.display()
    );
    notify::ready(&serving);

    spawn_watchdog(&tasks, engine.clone(), shutdown.clone());

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
    }
    notify::stopping("stopping: finishing in-flight requests");
    shutdown.cancel();
    let deadline = config.api.shutdown_timeout;
    let mut server = server;
    if tokio::time::timeout(deadline, &mut server).await.is_err() {
        tracing::warn!(?deadline, "in-flight requests outlived the shutdown deadline; cancelling them");
        engine.cancel_all();
        if tokio::time::timeout(CANCEL_GRACE, &mut server).await.is_err() {
            server.abort();
        }
    }
    // The requests are done: wait for the background work they left (cache writes) and the
    // tasks that watch the shutdown token, then let the owner threads finish what they were
    // given and join them.
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "background tasks outlived the drain deadline");
    }
    drop(engine);
    drop(cloud);
    drop(fleet);
    for thread in threads {
        thread.join(DRAIN).await;
    }
    socket::remove(&socket_path);
    tracing::info!("stopped");
    Ok(())
}

/// Pings systemd's watchdog at half its period, but only while the engine thread shows
/// progress: a stuck llama.cpp stops the pings and systemd restarts the daemon.
fn spawn_watchdog(tasks: &TaskTracker, engine: Engine, shutdown: CancellationToken) {
    let Some(period) = notify::watchdog_period() else { return };
    tracing::info!(?period, "systemd watchdog enabled");
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        let mut was_stuck = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let age = engine.heartbeat_age();
            if age < period {
                notify::watchdog();
                was_stuck = false;
            } else if !was_stuck {
                was_stuck = true;
                tracing::error!(?age, "engine shows no progress; withholding watchdog pings");
                status(&format!("engine stuck for {}s", age.as_secs()));
            }
        }
    });
}
