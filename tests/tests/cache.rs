//! The offline response cache end to end: a real `outpost serve` with its SQLite cache, the
//! shipped router for semantic hits, and the cloud unreachable.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_e2e::fake_cloud::unreachable_url;
use outpost_e2e::{outpost_bin, tiny_model, Daemon};
use serde_json::{json, Value};

fn ask(daemon: &Daemon, prompt: &str) -> outpost_e2e::Response {
    daemon.chat(&json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0,
    }))
}

fn content(r: &outpost_e2e::Response) -> String {
    r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

/// Waits until the daemon has stored `n` answers (stores run after the response).
fn wait_stored(daemon: &Daemon, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.metric("outpost_cache_stores_total{result=\"stored\"}") < n {
        assert!(Instant::now() < deadline, "answer not stored in time; log:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cache_dropin(db: &Path, extra: &str) -> String {
    // The tiny random model is never confident; store its answers anyway.
    format!("[cache]\npath = \"{}\"\nmin_confidence = 0.0\n{extra}", db.display())
}

#[test]
fn a_repeated_question_is_answered_from_the_cache_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cache.db");
    let model = tiny_model(21);
    let daemon = Daemon::start(&model, &cache_dropin(&db, ""));

    let started = Instant::now();
    let first = ask(&daemon, "Where is the Eiffel Tower?");
    let local_time = started.elapsed();
    assert_eq!(first.header("x-outpost-route"), Some("local"), "{}", first.text());
    wait_stored(&daemon, 1.0);

    let started = Instant::now();
    let again = ask(&daemon, "Where is the Eiffel Tower?");
    let cache_time = started.elapsed();
    assert_eq!(again.header("x-outpost-route"), Some("cache"), "{}", again.text());
    assert_eq!(content(&again), content(&first), "the same answer, not a second generation");
    let report = &again.json()["outpost"];
    assert_eq!(report["cache_hit"], "exact");
    assert_eq!(report["similarity"], 1.0);
    assert!(report["age_s"].is_number(), "{report}");
    eprintln!("local answer {local_time:?}, cache hit {cache_time:?}");

    // A random sample (temperature > 0) is not served from the cache while online.
    let sampled = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}],
        "max_tokens": 12, "temperature": 0.8,
    }));
    assert_eq!(sampled.header("x-outpost-route"), Some("local"));

    // kill -9, then a new daemon on the same file still answers from it.
    drop(daemon);
    let integrity = Command::new("python3")
        .args(["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&integrity.stdout).trim(), "ok");
    let daemon = Daemon::start(&model, &cache_dropin(&db, ""));
    let after = ask(&daemon, "Where is the Eiffel Tower?");
    assert_eq!(after.header("x-outpost-route"), Some("cache"), "{}", after.text());
    assert_eq!(content(&after), content(&first));
}

#[test]
fn an_offline_board_serves_preloaded_answers_by_meaning_but_not_near_misses() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cache.db");
    let preload = dir.path().join("preload.jsonl");
    std::fs::write(
        &preload,
        [
            json!({"prompt": "What is the capital of France?", "answer": "Paris."}),
            json!({"prompt": "How can I reset my password?", "answer": "Hold the reset button for 10 seconds."}),
            json!({"prompt": 1}),
        ]
        .iter()
        .map(|v| format!("{v}\n"))
        .collect::<String>(),
    )
    .unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, format!("[cache]\npath = \"{}\"\n", db.display())).unwrap();
    // A fleet preloads answers with the CLI; the bad line is reported, the good ones kept.
    let out = Command::new(outpost_bin())
        .args(["cache", "import", "--config"])
        .arg(&config)
        .arg(&preload)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 3"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"imported\":2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let model = tiny_model(21);
    let cloud = format!("[cloud]\nurl = \"{}\"\nmodel = \"m\"\n", unreachable_url());
    let daemon = Daemon::start(
        &model,
        &format!("{}\n[model]\ncontext = 64\nbatch = 64\n{cloud}", cache_dropin(&db, "")),
    );
    // Wait until the probe has found the cloud unreachable.
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.request("GET", "/v1/outpost/status", None).json()["cloud"]["connectivity"] != "offline" {
        assert!(Instant::now() < deadline, "the board never noticed it is offline");
        std::thread::sleep(Duration::from_millis(50));
    }

    let r = ask(&daemon, "What's the capital of France?");
    assert_eq!(r.header("x-outpost-route"), Some("cache"), "a paraphrase hits offline: {}", r.text());
    assert_eq!(content(&r), "Paris.");
    let report: Value = r.json()["outpost"].clone();
    assert_eq!(report["cache_hit"], "semantic");
    assert!(report["similarity"].as_f64().unwrap() >= 0.92, "{report}");

    let r = ask(&daemon, "What is not the capital of France?");
    assert_eq!(r.header("x-outpost-route"), Some("local"), "a negation is another question: {}", r.text());
    assert_ne!(content(&r), "Paris.");

    // Offline, nothing cached, and too long for the local model: a clear 503.
    let long = "Describe the rivers, the mountains and the towns of the region in detail. ".repeat(30);
    let r = ask(&daemon, &long);
    assert_eq!(r.status, 503, "{}", r.text());
    let error = &r.json()["error"];
    assert_eq!(error["code"], "offline_no_cache");
    assert!(error["message"].as_str().unwrap().contains("offline"), "{error}");

    // The admin endpoints see the same file.
    let stats = daemon.request("GET", "/admin/cache/stats", None).json();
    assert!(stats["entries"].as_u64().unwrap() >= 2, "{stats}");
    let export = daemon.request("GET", "/admin/cache/export", None).text();
    assert!(export.contains("Hold the reset button"), "{export}");
    let cleared = daemon.request("POST", "/admin/cache/clear", Some("{}")).json();
    assert!(cleared["removed"].as_u64().unwrap() >= 2, "{cleared}");
    let r = ask(&daemon, "What's the capital of France?");
    assert_eq!(r.header("x-outpost-route"), Some("local"), "cleared: {}", r.text());
}

#[test]
fn sigterm_right_after_an_answer_keeps_its_cache_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cache.db");
    let model = tiny_model(22);
    let mut daemon = Daemon::start(&model, &cache_dropin(&db, ""));
    let first = ask(&daemon, "Which river runs through Paris?");
    assert_eq!(first.header("x-outpost-route"), Some("local"), "{}", first.text());
    // No waiting for the store: SIGTERM at once. Shutdown awaits the write it acknowledged.
    assert!(daemon.terminate().success(), "{}", daemon.log());
    let daemon = Daemon::start(&model, &cache_dropin(&db, ""));
    let again = ask(&daemon, "Which river runs through Paris?");
    assert_eq!(again.header("x-outpost-route"), Some("cache"), "{}", again.text());
    assert_eq!(content(&again), content(&first));
}
