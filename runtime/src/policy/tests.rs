//! The rules as a table, and the properties that must hold for any input.

use proptest::prelude::*;

use super::*;
use crate::power::PowerSource;

const ROUTER_THRESHOLD: f32 = 0.5;

fn battery(level: u8, charging: bool) -> PowerState {
    PowerState { source: PowerSource::Battery, level: Some(level), charging }
}

/// A short prompt, online, on mains, no options.
fn base() -> Inputs {
    Inputs {
        complexity: Some(0.3),
        prompt_tokens: Some(100),
        local_context: 4096,
        max_tokens: 512,
        power: PowerState::MAINS,
        connectivity: Connectivity::Online,
        request: RequestOptions::default(),
    }
}

fn local_only() -> PolicyConfig {
    PolicyConfig { privacy: Privacy::LocalOnly, ..PolicyConfig::default() }
}

struct Row {
    name: &'static str,
    inputs: Inputs,
    config: PolicyConfig,
    route: Route,
    refusal: Option<Refusal>,
    /// A substring of the first reason.
    reason: &'static str,
}

fn row(name: &'static str, change: impl FnOnce(&mut Inputs), route: Route, reason: &'static str) -> Row {
    let mut inputs = base();
    change(&mut inputs);
    Row { name, inputs, config: PolicyConfig::default(), route, refusal: None, reason }
}

impl Row {
    fn refused(mut self, refusal: Refusal) -> Self {
        self.refusal = Some(refusal);
        self
    }

    fn config(mut self, config: PolicyConfig) -> Self {
        self.config = config;
        self
    }
}

fn rows() -> Vec<Row> {
    use Connectivity::{NotConfigured, Offline, Unknown};
    let cloud = |i: &mut Inputs| i.request.route = Some(RouteOverride::Cloud);
    let local = |i: &mut Inputs| i.request.route = Some(RouteOverride::Local);
    vec![
        row("simple prompt", |_| {}, Route::Local, "complexity 0.30 < threshold 0.50 (power mode high)"),
        row(
            "complex prompt",
            |i| i.complexity = Some(0.8),
            Route::Cloud,
            "complexity 0.80 >= threshold 0.50",
        ),
        row(
            "at the threshold",
            |i| i.complexity = Some(0.5),
            Route::Cloud,
            "complexity 0.50 >= threshold 0.50",
        ),
        row(
            "auto override",
            |i| i.request.route = Some(RouteOverride::Auto),
            Route::Local,
            "complexity 0.30 <",
        ),
        row(
            "complex, offline",
            |i| {
                i.complexity = Some(0.8);
                i.connectivity = Offline;
            },
            Route::Local,
            "offline: ",
        ),
        row(
            "complex, no cloud configured",
            |i| {
                i.complexity = Some(0.8);
                i.connectivity = NotConfigured;
            },
            Route::Local,
            "no cloud: ",
        ),
        row(
            "complex, connectivity not known yet",
            |i| {
                i.complexity = Some(0.8);
                i.connectivity = Unknown;
            },
            Route::Cloud,
            "complexity 0.80 >=",
        ),
        row("complex, local-only", |i| i.complexity = Some(0.8), Route::Local, "privacy: policy.privacy")
            .config(local_only()),
        row(
            "complex, request forbids the cloud",
            |i| {
                i.complexity = Some(0.8);
                i.request.allow_cloud = Some(false);
            },
            Route::Local,
            "privacy: the request",
        ),
        row(
            "complex, request allows the cloud",
            |i| {
                i.complexity = Some(0.8);
                i.request.allow_cloud = Some(true);
            },
            Route::Cloud,
            "complexity",
        ),
        row("router failed", |i| i.complexity = None, Route::Local, "router unavailable: "),
        row("router gave NaN", |i| i.complexity = Some(f32::NAN), Route::Local, "router unavailable: "),
        row(
            "prompt over the context",
            |i| i.prompt_tokens = Some(5000),
            Route::Cloud,
            "prompt of 5000 tokens exceeds local context of 4096",
        ),
        row(
            "prompt leaves too little room for an answer",
            |i| i.prompt_tokens = Some(4090),
            Route::Cloud,
            "prompt of 4090 tokens exceeds",
        ),
        row("prompt leaves just enough room", |i| i.prompt_tokens = Some(4080), Route::Local, "complexity"),
        row(
            "prompt leaves room for a short answer asked for",
            |i| {
                i.prompt_tokens = Some(4090);
                i.max_tokens = 4;
            },
            Route::Local,
            "complexity",
        ),
        row(
            "prompt over the context, offline",
            |i| {
                i.prompt_tokens = Some(5000);
                i.connectivity = Offline;
            },
            Route::Refuse,
            "prompt of 5000 tokens exceeds",
        )
        .refused(Refusal::ContextTooLong),
        row(
            "prompt over the context, local-only",
            |i| i.prompt_tokens = Some(4096),
            Route::Refuse,
            "prompt of",
        )
        .refused(Refusal::ContextTooLong)
        .config(local_only()),
        row(
            "prompt not counted yet",
            |i| {
                i.prompt_tokens = None;
                i.complexity = Some(0.9);
            },
            Route::Cloud,
            "complexity 0.90 >=",
        ),
        row(
            "override local, complex",
            |i| {
                local(i);
                i.complexity = Some(0.95);
            },
            Route::Local,
            "override: ",
        ),
        row(
            "override local, prompt too long",
            |i| {
                local(i);
                i.prompt_tokens = Some(9000);
            },
            Route::Refuse,
            "prompt of 9000 tokens",
        )
        .refused(Refusal::ContextTooLong),
        row("override cloud, simple", cloud, Route::Cloud, "override: "),
        row(
            "override cloud, prompt too long",
            |i| {
                cloud(i);
                i.prompt_tokens = Some(9000);
            },
            Route::Cloud,
            "override: ",
        ),
        row(
            "override cloud, offline",
            |i| {
                cloud(i);
                i.connectivity = Offline;
            },
            Route::Refuse,
            "offline: ",
        )
        .refused(Refusal::CloudUnavailable),
        row(
            "override cloud, not configured",
            |i| {
                cloud(i);
                i.connectivity = NotConfigured;
            },
            Route::Refuse,
            "no cloud: ",
        )
        .refused(Refusal::CloudUnavailable),
        row("override cloud, local-only", cloud, Route::Refuse, "privacy: ")
            .refused(Refusal::CloudUnavailable)
            .config(local_only()),
        row(
            "override cloud, request forbids the cloud",
            |i| {
                cloud(i);
                i.request.allow_cloud = Some(false);
            },
            Route::Refuse,
            "privacy: the request",
        )
        .refused(Refusal::CloudUnavailable),
        row(
            "battery 50 %: threshold 0.40",
            |i| {
                i.power = battery(50, false);
                i.complexity = Some(0.45);
            },
            Route::Cloud,
            "complexity 0.45 >= threshold 0.40 (power mode balanced)",
        ),
        row(
            "battery 15 %: threshold 0.25",
            |i| i.power = battery(15, false),
            Route::Cloud,
            "complexity 0.30 >= threshold 0.25 (power mode low)",
        ),
        row(
            "battery 10 % but charging: high",
            |i| {
                i.power = battery(10, true);
                i.complexity = Some(0.45);
            },
            Route::Local,
            "complexity 0.45 < threshold 0.50 (power mode high)",
        ),
        row(
            "configured threshold wins over the router's",
            |i| i.complexity = Some(0.8),
            Route::Local,
            "0.90",
        )
        .config(PolicyConfig { complexity_threshold: Some(0.9), ..PolicyConfig::default() }),
        row(
            "shifted threshold is clamped at 0",
            |i| {
                i.power = battery(5, false);
                i.complexity = Some(0.0);
            },
            Route::Cloud,
            "complexity 0.00 >= threshold 0.00 (power mode low)",
        )
        .config(PolicyConfig { complexity_threshold: Some(0.1), ..PolicyConfig::default() }),
    ]
}

#[test]
fn the_rules_table() {
    let power = PowerConfig::default();
    let rows = rows();
    assert!(rows.len() >= 15);
    for r in rows {
        let d = decide(&r.inputs, &r.config, &power, ROUTER_THRESHOLD);
        assert_eq!(d.route, r.route, "{}: {d:?}", r.name);
        assert_eq!(d.refusal, r.refusal, "{}: {d:?}", r.name);
        let first = d.reasons.first().map(String::as_str).unwrap_or_default();
        assert!(first.contains(r.reason), "{}: first reason {first:?} lacks {:?}", r.name, r.reason);
    }
}

#[test]
fn power_modes_set_the_limits() {
    let config = PolicyConfig::default();
    let power = PowerConfig::default();
    let limits = |state, max_tokens| {
        decide(&Inputs { power: state, max_tokens, ..base() }, &config, &power, ROUTER_THRESHOLD).limits
    };
    assert_eq!(limits(PowerState::MAINS, 512), LocalLimits { threads: None, max_tokens: 512 });
    assert_eq!(limits(battery(60, false), 512), LocalLimits { threads: None, max_tokens: 512 });
    assert_eq!(limits(battery(15, false), 512), LocalLimits { threads: Some(1), max_tokens: 256 });
    assert_eq!(limits(battery(15, false), 100), LocalLimits { threads: Some(1), max_tokens: 100 });
}

#[test]
fn cascade_only_for_the_policys_own_local_choice() {
    let config = PolicyConfig::default();
    let power = PowerConfig::default();
    let d = |inputs: Inputs, config: &PolicyConfig| decide(&inputs, config, &power, ROUTER_THRESHOLD);
    assert!(d(base(), &config).cascade);
    assert!(d(Inputs { complexity: None, ..base() }, &config).cascade);
    assert!(d(Inputs { connectivity: Connectivity::Unknown, ..base() }, &config).cascade);
    assert!(!d(Inputs { connectivity: Connectivity::Offline, ..base() }, &config).cascade);
    assert!(!d(Inputs { complexity: Some(0.9), ..base() }, &config).cascade, "already cloud");
    let mut forced = base();
    forced.request.route = Some(RouteOverride::Local);
    assert!(!d(forced, &config).cascade, "the request forced local");
    assert!(!d(base(), &PolicyConfig { cascade: false, ..PolicyConfig::default() }).cascade);
    assert!(!d(base(), &local_only()).cascade);
}

#[test]
fn non_finite_thresholds_keep_requests_local() {
    let config = PolicyConfig::default();
    let d = decide(&Inputs { complexity: Some(1.0), ..base() }, &config, &PowerConfig::default(), f32::NAN);
    assert_eq!(d.threshold, 1.0);
    assert_eq!(d.route, Route::Cloud, "complexity 1 still reaches a threshold of 1");
    let d =
        decide(&Inputs { complexity: Some(0.99), ..base() }, &config, &PowerConfig::default(), f32::INFINITY);
    assert_eq!(d.route, Route::Local);
}

#[test]
fn mode_tables_keep_their_own_defaults_for_keys_left_out() -> Result<(), Box<dyn std::error::Error>> {
    let config: PolicyConfig =
        toml::from_str("cascade = false\n[low]\nthreads = 2\n[balanced]\nmax_tokens = 400\n")?;
    assert!(!config.cascade);
    assert_eq!(config.low, ModePolicy { threads: Some(2), ..ModePolicy::LOW });
    assert_eq!(config.balanced, ModePolicy { max_tokens: Some(400), ..ModePolicy::BALANCED });
    assert_eq!(config.high, ModePolicy::HIGH);
    assert!(toml::from_str::<PolicyConfig>("[low]\nthread = 2\n").is_err(), "unknown keys are refused");
    Ok(())
}

#[test]
fn config_errors_name_the_key_under_policy() {
    let path = std::path::Path::new("/etc/outpost/outpost.toml");
    for (text, key) in [
        ("[policy]\ncomplexity_threshold = 1.5\n", "`policy.complexity_threshold`"),
        ("[policy]\nmin_confidence = -0.1\n", "`policy.min_confidence`"),
        ("[policy.low]\nthreshold_shift = 0.1\n", "`policy.low.threshold_shift`"),
        ("[policy.balanced]\nthreshold_shift = 0.2\n", "`policy.balanced.threshold_shift`"),
        ("[policy.high]\nthreads = 0\n", "`policy.high.threads`"),
        ("[policy.low]\nmax_tokens = 0\n", "`policy.low.max_tokens`"),
        ("[policy.low]\nthreshold_shift = -2.0\n", "`policy.low.threshold_shift`"),
        ("[policy.low]\nbogus = 1\n", "`policy.low.bogus`"),
    ] {
        match crate::config::Config::from_toml_str(path, text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => assert!(err.to_string().contains(key), "{text}: {err}"),
        }
    }
    assert!(PolicyConfig::default().validate().is_ok());
}

// ---- properties ----

fn any_connectivity() -> impl Strategy<Value = Connectivity> {
    prop_oneof![
        Just(Connectivity::Online),
        Just(Connectivity::Offline),
        Just(Connectivity::Unknown),
        Just(Connectivity::NotConfigured),
    ]
}

fn any_power() -> impl Strategy<Value = PowerState> {
    (any::<bool>(), proptest::option::of(0_u8..=100), any::<bool>()).prop_map(|(mains, level, charging)| {
        PowerState { source: if mains { PowerSource::Mains } else { PowerSource::Battery }, level, charging }
    })
}

fn any_request() -> impl Strategy<Value = RequestOptions> {
    let route = proptest::option::of(prop_oneof![
        Just(RouteOverride::Auto),
        Just(RouteOverride::Local),
        Just(RouteOverride::Cloud)
    ]);
    (proptest::option::of(any::<bool>()), route)
        .prop_map(|(allow_cloud, route)| RequestOptions { allow_cloud, route })
}

fn any_complexity() -> impl Strategy<Value = Option<f32>> {
    proptest::option::of(prop_oneof![4 => 0.0_f32..=1.0, 1 => any::<f32>()])
}

fn any_inputs() -> impl Strategy<Value = Inputs> {
    (
        any_complexity(),
        proptest::option::of(0_u32..10_000),
        64_u32..8192,
        0_u32..4096,
        any_power(),
        any_connectivity(),
        any_request(),
    )
        .prop_map(
            |(complexity, prompt_tokens, local_context, max_tokens, power, connectivity, request)| Inputs {
                complexity,
                prompt_tokens,
                local_context,
                max_tokens,
                power,
                connectivity,
                request,
            },
        )
}

fn any_mode_policy() -> impl Strategy<Value = (Option<u32>, Option<u32>)> {
    (proptest::option::of(1_u32..=16), proptest::option::of(1_u32..=2048))
}

/// Valid configurations: shifts ordered low ≤ balanced ≤ high.
fn any_config() -> impl Strategy<Value = PolicyConfig> {
    (
        any::<bool>(),
        proptest::option::of(0.0_f32..=1.0),
        any::<bool>(),
        proptest::array::uniform3(-1.0_f32..=1.0),
        proptest::array::uniform3(any_mode_policy()),
    )
        .prop_map(|(local, complexity_threshold, cascade, mut shifts, limits)| {
            shifts.sort_by(f32::total_cmp);
            let mode = |i: usize| ModePolicy {
                threshold_shift: shifts[i],
                threads: limits[i].0,
                max_tokens: limits[i].1,
            };
            let config = PolicyConfig {
                privacy: if local { Privacy::LocalOnly } else { Privacy::AllowCloud },
                complexity_threshold,
                min_confidence: 0.5,
                cascade,
                low: mode(0),
                balanced: mode(1),
                high: mode(2),
            };
            debug_assert!(config.validate().is_ok());
            config
        })
}

fn any_router_threshold() -> impl Strategy<Value = f32> {
    prop_oneof![9 => 0.0_f32..=1.0, 1 => any::<f32>()]
}

fn any_power_config() -> impl Strategy<Value = PowerConfig> {
    (0_u8..=100).prop_map(|low_battery| PowerConfig { low_battery, ..PowerConfig::default() })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_cloud_when_forbidden_or_unreachable(
        inputs in any_inputs(), config in any_config(), power in any_power_config(), rt in any_router_threshold(),
    ) {
        let d = decide(&inputs, &config, &power, rt);
        let forbidden = config.privacy == Privacy::LocalOnly
            || inputs.request.allow_cloud == Some(false)
            || !inputs.connectivity.may_call();
        prop_assert_eq!(d.cloud_allowed, !forbidden);
        if forbidden {
            prop_assert_ne!(d.route, Route::Cloud, "{:?}", d);
            prop_assert!(!d.cascade);
        }
    }

    #[test]
    fn decisions_are_well_formed(
        inputs in any_inputs(), config in any_config(), power in any_power_config(), rt in any_router_threshold(),
    ) {
        let d = decide(&inputs, &config, &power, rt);
        prop_assert_eq!(d.route == Route::Refuse, d.refusal.is_some(), "{:?}", d);
        prop_assert_ne!(d.route, Route::Cache);
        prop_assert!(!d.reasons.is_empty());
        prop_assert!((0.0..=1.0).contains(&d.threshold), "{:?}", d);
        prop_assert!(d.limits.max_tokens <= inputs.max_tokens);
        prop_assert_eq!(d.power_mode, power.mode(&inputs.power));
        if d.cascade {
            prop_assert_eq!(d.route, Route::Local);
        }
        if inputs.request.route == Some(RouteOverride::Local) {
            prop_assert_ne!(d.route, Route::Cloud);
        }
    }

    #[test]
    fn the_threshold_falls_with_the_power_mode(
        inputs in any_inputs(), config in any_config(), power in any_power_config(), rt in any_router_threshold(),
    ) {
        let at = |state: PowerState| decide(&Inputs { power: state, ..inputs }, &config, &power, rt);
        let high = at(PowerState::MAINS);
        let balanced = at(PowerState { source: PowerSource::Battery, level: None, charging: false });
        let low = at(PowerState { source: PowerSource::Battery, level: Some(0), charging: false });
        prop_assert_eq!(high.power_mode, PowerMode::High);
        prop_assert_eq!(balanced.power_mode, PowerMode::Balanced);
        prop_assert_eq!(low.power_mode, PowerMode::Low);
        prop_assert!(low.threshold <= balanced.threshold && balanced.threshold <= high.threshold,
            "{} {} {}", low.threshold, balanced.threshold, high.threshold);
    }

    #[test]
    fn more_complexity_never_brings_a_request_back_from_the_cloud(
        inputs in any_inputs(), config in any_config(), power in any_power_config(), rt in any_router_threshold(),
        a in 0.0_f32..=1.0, b in 0.0_f32..=1.0,
    ) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let at = |c| decide(&Inputs { complexity: Some(c), ..inputs }, &config, &power, rt).route;
        if at(lo) == Route::Cloud {
            prop_assert_eq!(at(hi), Route::Cloud);
        }
    }
}
