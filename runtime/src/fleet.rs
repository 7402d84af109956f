//! The runtime's fleet agent: MQTT commands translated into the operations the admin API and
//! the CLI already use (one code path each), the retained status, and periodic telemetry.
//!
//! | Command | Arguments | Does |
//! |---|---|---|
//! | `reload` | – | loads the model again (as `POST /admin/reload`) |
//! | `config.set` | `{"toml": "<fragment>"}` | validates the fragment as the drop-in `config.d/50-fleet.toml` would be, writes it atomically; the result lists the changed keys and says that a restart applies them |
//! | `cache.clear` | – | empties the response cache (as `POST /admin/cache/clear`) |
//! | `cache.import` | `{"jsonl": "<lines>"}` (≤ 1 MiB) | imports (as `POST /admin/cache/import`) |
//! | `route.explain` | `{"prompt": "..."}` | the routing decision with its reasons |
//! | `status` | – | republishes the status now |

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use outpost_common::fleet::{Component, ModelStatus, Status, Telemetry};
use outpost_common::mqtt::{unix_now, Agent, Handler, Job, JobError, MqttError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::config::{Config, DROP_IN_DIR, FLEET_DROP_IN};

/// The commands the runtime takes.
pub const COMMANDS: &[&str] =
    &["reload", "config.set", "cache.clear", "cache.import", "route.explain", "status"];
/// The largest `cache.import` payload.
pub const MAX_IMPORT_BYTES: usize = 1 << 20;

/// Starts the agent (when `[mqtt]` is configured) and the telemetry task.
pub fn start(
    state: &AppState,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Option<Agent>, MqttError> {
    let Some(settings) = state.config.fleet.clone() else { return Ok(None) };
    let handler = Arc::new(RuntimeFleet { state: state.clone() });
    let agent = Agent::start(
        &settings,
        Component::Runtime,
        env!("CARGO_PKG_VERSION"),
        handler,
        tasks,
        shutdown.clone(),
    )?;
    tasks.spawn(telemetry_loop(
        state.clone(),
        agent.clone(),
        settings.config.telemetry_interval,
        shutdown.clone(),
    ));
    tasks.spawn(watch_status(state.clone(), agent.clone(), shutdown));
    Ok(Some(agent))
}

struct RuntimeFleet {
    state: AppState,
}

fn arg<'a>(job: &'a Job, key: &str) -> Result<&'a str, JobError> {
    job.args
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::Rejected(format!("`{}` needs a string argument `{key}`", job.cmd)))
}

impl Handler for RuntimeFleet {
    fn commands(&self) -> &'static [&'static str] {
        COMMANDS
    }

    fn run(&self, job: Job) -> BoxFuture<'static, Result<Value, JobError>> {
        let state = self.state.clone();
        Box::pin(async move {
            match job.cmd.as_str() {
                "reload" => {
                    let info = state.engine.load().await.map_err(|e| JobError::Failed(e.to_string()))?;
                    Ok(json!({ "status": "reloaded", "model": *info }))
                }
                "config.set" => config_set(&state.config, arg(&job, "toml")?.to_owned()).await,
                "cache.clear" => {
                    let cache = cache(&state)?;
                    let removed = cache.clear(None).await.map_err(|e| JobError::Failed(e.to_string()))?;
                    Ok(json!({ "removed": removed }))
                }
                "cache.import" => {
                    let cache = cache(&state)?;
                    let jsonl = arg(&job, "jsonl")?;
                    if jsonl.len() > MAX_IMPORT_BYTES {
                        return Err(JobError::Rejected(format!(
                            "jsonl is {} bytes; at most {MAX_IMPORT_BYTES} per command",
                            jsonl.len()
                        )));
                    }
                    let body = axum::body::Bytes::from(jsonl.to_owned());
                    let report = crate::api::admin_cache::import_jsonl(&state, &cache, body)
                        .await
                        .map_err(JobError::Failed)?;
                    Ok(serde_json::to_value(report).unwrap_or_default())
                }
                "route.explain" => Ok(crate::api::chat::explain(&state, arg(&job, "prompt")?).await),
                "status" => Ok(json!({ "republished": true })),
                other => Err(JobError::Rejected(format!("unknown command `{other}`"))),
            }
        })
    }

    fn status(&self) -> BoxFuture<'static, Status> {
        let state = self.state.clone();
        Box::pin(async move {
            let power = *state.power.borrow();
            let mode = state.config.power.mode(&power);
            let cache_entries = match &state.cache {
                Some(cache) => cache.stats().await.ok().map(|s| s.entries),
                None => None,
            };
            Status {
                model: state.engine.model().map(|m| ModelStatus {
                    id: m.id.clone(),
                    version: m.version.clone(),
                    sha256: m.sha256.clone(),
                }),
                router_version: state.router.as_ref().map(|r| r.info().version.clone()),
                power_mode: Some(label(&mode)),
                battery: power.level,
                connectivity: Some(label(&state.cloud.connectivity())),
                cache_entries,
                ..Status::default()
            }
        })
    }
}

fn label(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn cache(state: &AppState) -> Result<crate::cache::Cache, JobError> {
    state
        .cache
        .clone()
        .ok_or(JobError::Failed("the response cache is disabled or could not be opened".into()))
}

/// `config.set`: the fragment must be valid TOML that, written as `config.d/50-fleet.toml`,
/// gives a configuration that passes every check `outpost check-config` makes; only then is
/// it written (atomically). A bad fragment changes nothing.
async fn config_set(current: &Config, toml_text: String) -> Result<Value, JobError> {
    let Some((base, explicit)) = current.loaded_from.clone() else {
        return Err(JobError::Failed("this daemon was not started from a config file".into()));
    };
    let dir = base.parent().unwrap_or_else(|| std::path::Path::new(".")).join(DROP_IN_DIR);
    let drop_in = dir.join(FLEET_DROP_IN);
    let old_value = merged_value(&base, explicit, None).await;
    let text = toml_text.clone();
    let (path, check_path) = (drop_in.clone(), drop_in.clone());
    tokio::task::spawn_blocking(move || Config::load_with_candidate(&base, explicit, &check_path, &text))
        .await
        .map_err(|e| JobError::Failed(e.to_string()))?
        .map_err(|e| JobError::Rejected(e.to_string()))?;
    let (base, _) = current.loaded_from.clone().unwrap_or_default();
    let new_value = merged_value(&base, explicit, Some((drop_in.clone(), toml_text.clone()))).await;
    tokio::task::spawn_blocking(move || outpost_common::config::write_atomically(&path, &toml_text))
        .await
        .map_err(|e| JobError::Failed(e.to_string()))?
        .map_err(|e| JobError::Failed(format!("cannot write {}: {e}", drop_in.display())))?;
    let mut changed = Vec::new();
    diff("", &old_value, &new_value, &mut changed);
    Ok(json!({
        "written": drop_in,
        "changed": changed,
        "restart_required": !changed.is_empty(),
    }))
}

/// The merged TOML as a table (empty if it cannot be read).
async fn merged_value(
    base: &std::path::Path,
    explicit: bool,
    candidate: Option<(std::path::PathBuf, String)>,
) -> toml::Table {
    let base = base.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let sources = Config::sources(&base, explicit);
        let merged = match &candidate {
            Some((path, text)) => outpost_common::config::Merged::load_with(&sources, Some((path, text))),
            None => outpost_common::config::Merged::load(&sources),
        };
        merged.map(|m| m.value().clone()).unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// The dotted keys whose values differ between two tables.
fn diff(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let empty = toml::Table::new();
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => diff(&dotted, x, y, out),
            (Some(toml::Value::Table(x)), None) => diff(&dotted, x, &empty, out),
            (None, Some(toml::Value::Table(y))) => diff(&dotted, &empty, y, out),
            (x, y) if x != y => out.push(dotted),
            _ => {}
        }
    }
}

/// Republishes the status when what it shows changes (a reload or an update swapped the model,
/// the power mode or the cloud's reachability changed), checked every 2 s.
async fn watch_status(state: AppState, agent: Agent, shutdown: CancellationToken) {
    let snapshot = |s: &AppState| {
        let power = *s.power.borrow();
        let model = s.engine.model().map(|m| (m.id.clone(), m.version.clone(), m.loaded_at));
        (model, label(&s.config.power.mode(&power)), power.level, label(&s.cloud.connectivity()))
    };
    let mut last = snapshot(&state);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = snapshot(&state);
        if now != last {
            last = now;
            agent.status_changed();
        }
    }
}

/// Every interval: what happened since the last report, buffered and sent by the agent.
async fn telemetry_loop(state: AppState, agent: Agent, interval: Duration, shutdown: CancellationToken) {
    let mut last = Counters::read(&state);
    let mut from = unix_now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = Counters::read(&state);
        let report = now.report(&last, &state, from);
        from = report.to;
        last = now;
        agent.push_telemetry(report).await;
    }
}

/// The counters telemetry reports differences of.
struct Counters {
    routes: std::collections::BTreeMap<String, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cascade_checked: u64,
    cascaded: u64,
    cache_hits: u64,
    cache_lookups: u64,
    cost_avoided: f64,
    #[allow(dead_code)]
    at: Instant,
}

impl Counters {
    fn read(state: &AppState) -> Self {
        let m = &state.metrics;
        let routes = ["local", "cloud", "cache", "refuse"]
            .iter()
            .map(|r| {
                let labels = crate::metrics::RouteLabels { route: (*r).to_owned() };
                ((*r).to_owned(), m.routes.get_or_create(&labels).get())
            })
            .collect();
        let lookups = |result: &str| {
            m.cache_lookups.get_or_create(&crate::metrics::ResultLabels { result: result.to_owned() }).get()
        };
        let hits = lookups("exact") + lookups("semantic");
        Self {
            routes,
            prompt_tokens: m.prompt_tokens.get(),
            completion_tokens: m.completion_tokens.get(),
            cascade_checked: m.cascade_checked.get(),
            cascaded: m.cascaded.get(),
            cache_hits: hits,
            cache_lookups: hits + lookups("miss"),
            cost_avoided: m.cloud_cost_avoided.get(),
            at: Instant::now(),
        }
    }

    fn report(&self, last: &Counters, state: &AppState, from: u64) -> Telemetry {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let mut latencies = state.metrics.take_latencies();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            (!latencies.is_empty()).then(|| latencies[((latencies.len() - 1) as f64 * p).round() as usize])
        };
        let power = *state.power.borrow();
        Telemetry {
            from,
            to: unix_now(),
            requests: self
                .routes
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(last.routes.get(k).copied().unwrap_or(0))))
                .collect(),
            prompt_tokens: self.prompt_tokens - last.prompt_tokens,
            completion_tokens: self.completion_tokens - last.completion_tokens,
            latency_p50_ms: pct(0.5),
            latency_p95_ms: pct(0.95),
            cascade_rate: ratio(self.cascaded - last.cascaded, self.cascade_checked - last.cascade_checked),
            cache_hit_rate: ratio(self.cache_hits - last.cache_hits, self.cache_lookups - last.cache_lookups),
            cloud_cost_avoided: (self.cost_avoided - last.cost_avoided).max(0.0),
            power_mode: label(&state.config.power.mode(&power)),
            battery: power.level,
            ..Telemetry::default()
        }
    }
}
