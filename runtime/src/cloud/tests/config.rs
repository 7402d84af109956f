//! `[cloud]` as an operator writes it.

use std::time::Duration;

use crate::cloud::CloudConfig;

fn parse(toml: &str) -> Result<CloudConfig, String> {
    toml::from_str(toml).map_err(|e| e.to_string())
}

#[test]
fn parses_durations_and_keeps_defaults_for_the_rest() {
    let config = parse(
        "url = \"https://api.example.com/v1\"\ntimeout = \"90s\"\nbackoff = \"100ms\"\nprobe_max_interval = \"10m\"\n",
    )
    .expect("valid");
    assert_eq!(config.timeout, Duration::from_secs(90));
    assert_eq!(config.backoff, Duration::from_millis(100));
    assert_eq!(config.probe_max_interval, Duration::from_secs(600));
    assert_eq!(config.model, "gpt-4o-mini");
    assert_eq!(config.connect_timeout, Duration::from_secs(5));
    assert_eq!((config.retries, config.breaker_failures), (2, 3));
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(CloudConfig::default().validate(), Ok(()), "no cloud is a valid configuration");
}

#[test]
fn refuses_unknown_keys() {
    assert!(parse("url = \"https://x/v1\"\napi_key = \"sk-inline\"\n").is_err_and(|e| e.contains("api_key")));
}

#[test]
fn validation_names_the_offending_key() {
    let with = |edit: fn(&mut CloudConfig)| {
        let mut config =
            CloudConfig { url: Some("https://api.example.com/v1".into()), ..CloudConfig::default() };
        edit(&mut config);
        config.validate().map_err(|(key, _)| key)
    };
    assert_eq!(with(|c| c.url = Some("ftp://example.com".into())), Err("url"));
    assert_eq!(with(|c| c.url = Some("not a url".into())), Err("url"));
    assert_eq!(with(|c| c.url = Some("https://".into())), Err("url"));
    assert_eq!(with(|c| c.url = Some("http://10.0.0.5:8000/v1".into())), Ok(()));
    assert_eq!(with(|c| c.model = " ".into()), Err("model"));
    assert_eq!(with(|c| c.timeout = Duration::ZERO), Err("timeout"));
    assert_eq!(with(|c| c.idle_timeout = Duration::ZERO), Err("idle_timeout"));
    assert_eq!(with(|c| c.breaker_cooldown = Duration::ZERO), Err("breaker_cooldown"));
    assert_eq!(with(|c| c.probe_max_interval = Duration::from_secs(1)), Err("probe_max_interval"));
    assert_eq!(with(|c| c.retries = 11), Err("retries"));
    assert_eq!(with(|c| c.retries = 10), Ok(()));
    assert_eq!(with(|c| c.breaker_failures = 0), Err("breaker_failures"));
    assert_eq!(with(|c| c.price_per_1k_tokens = -0.1), Err("price_per_1k_tokens"));
    assert_eq!(with(|c| c.price_per_1k_tokens = f64::NAN), Err("price_per_1k_tokens"));
}
