//! Routing end to end: a real `outpost serve` with the shipped ONNX router, real llama.cpp on a
//! tiny model, and a fake cloud on localhost (the only thing faked: it lies outside the board).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use outpost_e2e::fake_cloud::{unreachable_url, FakeCloud, CLOUD_ANSWER};
use outpost_e2e::{outpost_bin, tiny_model, Daemon};
use serde_json::{json, Value};

const EASY: &str = "What is the capital of France?";
const HARD: &str = "A train leaves at 3:40 pm travelling at 84 km/h; a second train leaves the same station \
    55 minutes later at 112 km/h on a parallel track. At what time does the second train catch up, and how far \
    from the station are they? Show each step of the calculation.";

fn ask(daemon: &Daemon, prompt: &str, extra: Value) -> outpost_e2e::Response {
    let mut body = json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    daemon.chat(&body)
}

fn cloud_dropin(url: &str, key_file: &Path, policy: &str) -> String {
    format!(
        "[cloud]\nurl = \"{url}\"\nmodel = \"big-cloud-model\"\napi_key_file = \"{}\"\n\n[policy]\n{policy}\n",
        key_file.display()
    )
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cloud-key");
    std::fs::write(&path, "sk-test-123\n").unwrap();
    path
}

fn route(response: &outpost_e2e::Response) -> (String, Value) {
    let header = response.header("x-outpost-route").unwrap_or_default().to_owned();
    (header, response.json()["outpost"].clone())
}

/// `outpost route --jsonl` with a config in `dir`; returns (stdout lines, success).
fn route_cli(dir: &Path, config: &str, input: &str) -> (Vec<Value>, bool, String) {
    let path = dir.join("route.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(outpost_bin())
        .args(["route", "--jsonl", "--config"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (lines, out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn route_cli_scores_in_order_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{}\nnot json\n{}\n{{\"text\": \"no prompt field\"}}\n{}\n",
        json!({"prompt": EASY}),
        json!({"prompt": HARD}),
        json!({"prompt": HARD, "outpost": {"allow_cloud": false}}),
    );
    let cloud = FakeCloud::start();
    let config =
        format!("[cloud]\nurl = \"{}\"\nmodel = \"m\"\n[policy]\ncomplexity_threshold = 0.0\n", cloud.url());
    let (lines, ok, stderr) = route_cli(dir.path(), &config, &input);
    assert!(!ok, "bad lines make the exit status non-zero");
    assert!(stderr.contains("2 input line(s)"), "{stderr}");
    assert_eq!(lines.len(), 5, "one output line per input line, in order: {lines:?}");
    let easy = lines[0]["complexity"].as_f64().unwrap();
    let hard = lines[2]["complexity"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&easy) && (0.0..=1.0).contains(&hard));
    assert_ne!(hard, easy, "different prompts, different scores");
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"), "{:?}", lines[1]);
    assert!(lines[3]["error"].as_str().unwrap().contains("prompt"), "{:?}", lines[3]);
    // Threshold 0 sends everything to the (reachable) cloud unless the request keeps it local.
    assert_eq!(lines[2]["route"], "cloud", "{:?}", lines[2]);
    assert_eq!(lines[4]["route"], "local", "{:?}", lines[4]);
    assert!(lines[4]["reasons"].to_string().contains("allow_cloud"), "{:?}", lines[4]);
}

#[test]
fn hard_prompts_go_to_the_cloud_and_easy_ones_stay_local() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, ok, stderr) =
        route_cli(dir.path(), "", &format!("{}\n{}\n", json!({"prompt": EASY}), json!({"prompt": HARD})));
    assert!(ok, "{stderr}");
    // Whichever of the two prompts the router scores higher is the one that must go out.
    let (a, b) = (lines[0]["complexity"].as_f64().unwrap(), lines[1]["complexity"].as_f64().unwrap());
    assert!((a - b).abs() > 0.01, "the router tells the prompts apart: {a} vs {b}");
    let ((easy_prompt, easy), (hard_prompt, _)) =
        if a < b { ((EASY, a), (HARD, b)) } else { ((HARD, b), (EASY, a)) };
    let threshold = (a + b) / 2.0;

    let cloud = FakeCloud::start();
    let key = key_file(dir.path());
    let model = tiny_model(11);
    let daemon = Daemon::start(
        &model,
        &cloud_dropin(
            &cloud.url(),
            &key,
            &format!("complexity_threshold = {threshold}\nmin_confidence = 0.0"),
        ),
    );

    let local = ask(&daemon, easy_prompt, json!({}));
    assert_eq!(local.status, 200, "{}", local.text());
    let (header, report) = route(&local);
    assert_eq!(header, "local");
    assert_eq!(report["route"], "local");
    assert!((report["complexity"].as_f64().unwrap() - easy).abs() < 1e-3, "{report}");
    assert!(report["confidence"].is_number(), "local answers carry their confidence: {report}");

    let remote = ask(&daemon, hard_prompt, json!({"outpost": {"allow_cloud": true}}));
    assert_eq!(remote.status, 200, "{}", remote.text());
    let (header, report) = route(&remote);
    assert_eq!(header, "cloud");
    assert_eq!(remote.json()["choices"][0]["message"]["content"], CLOUD_ANSWER);
    assert!(report["reasons"].to_string().contains("complexity"), "{report}");
    assert_eq!(report["cascaded"], false);

    // What left the board: the configured model, the key from the file, no Outpost options.
    let sent = cloud.completions();
    assert_eq!(sent.len(), 1, "only the hard prompt went out");
    let body: Value = serde_json::from_str(&sent[0].body).unwrap();
    assert_eq!(body["model"], "big-cloud-model");
    assert!(body.get("outpost").is_none(), "{body}");
    assert_eq!(body["messages"][0]["content"], hard_prompt);
    assert_eq!(sent[0].authorization.as_deref(), Some("Bearer sk-test-123"));

    assert_eq!(daemon.metric("outpost_routes_total{route=\"local\"}"), 1.0);
    assert_eq!(daemon.metric("outpost_routes_total{route=\"cloud\"}"), 1.0);
    assert!(daemon.metric("outpost_router_seconds_count") >= 2.0);
    assert!(daemon.metric("outpost_cloud_cost_avoided_dollars_total") > 0.0);
}

#[test]
fn private_and_offline_requests_never_leave_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let model = tiny_model(11);
    let cloud = FakeCloud::start();

    // Privacy policy: everything is "complex" (threshold 0), still nothing goes out.
    let private = Daemon::start(
        &model,
        &cloud_dropin(
            &cloud.url(),
            &key,
            "privacy = \"local-only\"\ncomplexity_threshold = 0.0\nmin_confidence = 0.99",
        ),
    );
    let r = ask(&private, HARD, json!({}));
    let (header, report) = route(&r);
    assert_eq!((r.status, header.as_str()), (200, "local"), "{}", r.text());
    assert!(report["reasons"].to_string().contains("privacy"), "{report}");
    assert_eq!(report["cascaded"], false, "no cascade to a forbidden cloud");
    let forced = ask(&private, HARD, json!({"outpost": {"route": "cloud"}}));
    assert_eq!(forced.status, 503, "{}", forced.text());
    assert_eq!(forced.json()["error"]["code"], "route_unavailable");
    drop(private);

    // Per request: allow_cloud = false.
    let open = Daemon::start(
        &model,
        &cloud_dropin(&cloud.url(), &key, "complexity_threshold = 0.0\nmin_confidence = 0.0"),
    );
    let r = ask(&open, HARD, json!({"outpost": {"allow_cloud": false}}));
    assert_eq!(route(&r).0, "local", "{}", r.text());
    assert!(route(&r).1["reasons"].to_string().contains("allow_cloud"), "{}", r.text());
    assert_eq!(cloud.completions().len(), 0, "no prompt reached the cloud");
    drop(open);

    // Unreachable cloud: the request is answered locally, and the board knows it is offline.
    let offline = Daemon::start(
        &model,
        &cloud_dropin(&unreachable_url(), &key, "complexity_threshold = 0.0\nmin_confidence = 0.0"),
    );
    let r = ask(&offline, HARD, json!({}));
    assert_eq!((r.status, route(&r).0.as_str()), (200, "local"), "{}", r.text());
    let status = offline.request("GET", "/v1/outpost/status", None).json();
    assert_eq!(status["cloud"]["connectivity"], "offline", "{status}");
    let r = ask(&offline, HARD, json!({}));
    assert_eq!(route(&r).0, "local");
    assert!(route(&r).1["reasons"].to_string().contains("offline"), "{}", r.text());
    assert_eq!(offline.metric("outpost_connectivity{state=\"offline\"}"), 1.0);
    let forced = ask(&offline, HARD, json!({"outpost": {"route": "cloud"}}));
    assert_eq!(forced.status, 503, "{}", forced.text());
}

#[test]
fn prompts_over_the_local_context_go_to_the_cloud_or_get_a_clear_400() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let model = tiny_model(11);
    let cloud = FakeCloud::start();
    let long = "Tell me about the history of the region and its rivers, mountains and towns. ".repeat(20);
    let small = "[model]\ncontext = 64\nbatch = 64\n";

    let daemon = Daemon::start(
        &model,
        &format!("{small}{}", cloud_dropin(&cloud.url(), &key, "complexity_threshold = 1.0")),
    );
    let r = ask(&daemon, &long, json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let (header, report) = route(&r);
    assert_eq!(header, "cloud");
    assert!(report["reasons"].to_string().contains("context"), "{report}");
    drop(daemon);

    let private = Daemon::start(
        &model,
        &format!("{small}{}", cloud_dropin(&cloud.url(), &key, "privacy = \"local-only\"")),
    );
    let r = ask(&private, &long, json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    let error = &r.json()["error"];
    assert_eq!(error["code"], "context_length_exceeded");
    assert!(error["message"].as_str().unwrap().contains("privacy"), "{error}");
}

#[test]
fn unsure_local_answers_cascade_to_the_cloud_when_not_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let model = tiny_model(11);
    let cloud = FakeCloud::start();
    // A random-weight model is never sure of its tokens: its confidence is low.
    let daemon = Daemon::start(
        &model,
        &cloud_dropin(&cloud.url(), &key, "complexity_threshold = 1.0\nmin_confidence = 0.9"),
    );

    let r = ask(&daemon, EASY, json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let (header, report) = route(&r);
    assert_eq!(header, "cloud", "{report}");
    assert_eq!(report["cascaded"], true);
    assert!(report["confidence"].as_f64().unwrap() < 0.9, "{report}");
    assert!(report["reasons"].to_string().contains("cascade"), "{report}");
    assert_eq!(r.json()["choices"][0]["message"]["content"], CLOUD_ANSWER);
    assert_eq!(daemon.metric("outpost_cascaded_total"), 1.0);

    // Streamed: the local tokens are already out; no cascade, the confidence is reported.
    // (Another question: the cloud's answer to the first one is in the response cache now.)
    let r = ask(&daemon, HARD, json!({"stream": true}));
    assert_eq!(r.header("x-outpost-route"), Some("local"));
    let chunks: Vec<Value> =
        r.sse_data().iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
    let finish = chunks.iter().find(|c| !c["choices"][0]["finish_reason"].is_null()).expect("finish chunk");
    assert_eq!(finish["outpost"]["route"], "local");
    assert!(finish["outpost"]["confidence"].as_f64().unwrap() < 0.9);
    assert_eq!(cloud.completions().len(), 1, "only the non-streamed answer cascaded");
}

#[test]
fn forced_cloud_streams_through_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let cloud = FakeCloud::start();
    let daemon =
        Daemon::start(&tiny_model(11), &cloud_dropin(&cloud.url(), &key, "complexity_threshold = 1.0"));
    let r = ask(&daemon, EASY, json!({"stream": true, "outpost": {"route": "cloud"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-outpost-route"), Some("cloud"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, CLOUD_ANSWER);
    let finish = chunks.iter().find(|c| !c["choices"][0]["finish_reason"].is_null()).expect("finish chunk");
    assert_eq!(finish["outpost"]["route"], "cloud");
    assert!(finish["outpost"]["reasons"].to_string().contains("override"), "{finish}");
    let sent: Value = serde_json::from_str(&cloud.completions()[0].body).unwrap();
    assert_eq!(sent["stream"], true);
}

#[test]
fn low_battery_lowers_the_cloud_threshold_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let supply = dir.path().join("power_supply");
    let bat = supply.join("BAT0");
    std::fs::create_dir_all(&bat).unwrap();
    std::fs::write(bat.join("type"), "Battery\n").unwrap();
    std::fs::write(bat.join("capacity"), "9\n").unwrap();
    std::fs::write(bat.join("status"), "Discharging\n").unwrap();
    std::fs::write(bat.join("present"), "1\n").unwrap();
    let daemon = Daemon::start(
        &tiny_model(11),
        // Two llama.cpp threads configured; the low power mode runs requests on one.
        &format!(
            "[model]\nthreads = 2\n[power]\nsupply_root = \"{}\"\n[policy]\ncomplexity_threshold = 0.5\n",
            supply.display()
        ),
    );
    let status = daemon.request("GET", "/v1/outpost/status", None).json();
    assert_eq!(status["power"]["mode"], "low", "{status}");
    assert_eq!(status["power"]["level"], 9);
    assert_eq!(status["cloud"]["connectivity"], "not_configured", "{status}");
    assert_eq!(daemon.metric("outpost_power_mode{state=\"low\"}"), 1.0);
    assert_eq!(daemon.metric("outpost_battery_level_percent"), 9.0);
    let r = ask(&daemon, EASY, json!({}));
    let (_, report) = route(&r);
    assert_eq!(report["power_mode"], "low");
    assert!(report["threshold"].as_f64().unwrap() < 0.5, "low battery sends more to the cloud: {report}");
    assert!(
        daemon.log().contains("threads changed"),
        "low power mode runs llama.cpp on fewer threads:\n{}",
        daemon.log()
    );
}
