//! `GET /v1/outpost/status`: the signals routing decides on, as the daemon sees them now, and
//! the fleet connection.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// The handler.
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    let power = *state.power.borrow();
    let mode = state.config.power.mode(&power);
    let router = match (&state.router, &state.router_error) {
        (Some(router), _) => json!({ "loaded": true, "info": router.info() }),
        (None, Some(err)) => json!({ "loaded": false, "error": err }),
        (None, None) => json!({ "loaded": false, "error": "disabled (router.enabled = false)" }),
    };
    let threshold = state.config.policy.complexity_threshold.unwrap_or(state.router_threshold);
    Json(json!({
        "power": { "source": power.source, "level": power.level, "charging": power.charging, "mode": mode },
        "cloud": state.cloud.status(),
        "router": router,
        "policy": {
            "privacy": state.config.policy.privacy,
            "complexity_threshold": threshold,
            "min_confidence": state.config.policy.min_confidence,
        },
        "model": state.engine.model().map(|m| m.id.clone()),
        // Fleet control: absent without `[mqtt]`; else the broker connection.
        "fleet": state.fleet.get().map(|c| c.borrow().clone()),
    }))
}
