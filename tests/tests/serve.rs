//! `outpost serve` end to end: a real daemon on a synthetic model, real llama.cpp, a real socket.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use outpost_e2e::{tiny_model, Daemon, Sse};
use serde_json::{json, Value};

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[test]
fn ready_status_models_and_health() {
    let model = tiny_model(1);
    let daemon = Daemon::start(&model, "");
    let lines = daemon.notifications.lines();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert!(lines[..ready].iter().any(|l| l.starts_with("STATUS=loading model")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("STATUS=serving")), "{lines:?}");

    // The socket had its final mode before READY.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
    let ready = daemon.request("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());

    let models = daemon.request("GET", "/v1/models", None).json();
    let entry = &models["data"][0];
    assert_eq!(entry["object"], "model");
    assert_eq!(entry["quantization"], "F16");
    assert_eq!(entry["context"], 1024);
    assert_eq!(entry["file"], model.canonicalize().unwrap().display().to_string());
    assert_eq!(entry["size"], std::fs::metadata(&model).unwrap().len());
    assert!(entry.get("version").is_none(), "no manifest, no version: {entry}");

    let missing = daemon.request("GET", "/nope", None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
}

#[test]
fn completion_plain_streamed_seeded_stopped_and_with_logprobs() {
    let daemon = Daemon::start(&tiny_model(1), "");
    let body = json!({ "messages": user("Tell me about the sea."), "max_tokens": 12, "temperature": 0 });
    let response = daemon.chat(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-outpost-route"), Some("local"));
    let first = response.json();
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    let text = first["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let usage = &first["usage"];
    let generated = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&generated), "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + generated);
    if generated == 12 {
        assert_eq!(first["choices"][0]["finish_reason"], "length");
    }

    // Greedy decoding is deterministic, and the second run reuses the prompt's KV cache.
    let again = daemon.chat(&body).json();
    assert_eq!(again["choices"][0]["message"]["content"], text.as_str());
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0,
        "{}",
        again["usage"]
    );

    // Streaming gives the same text in SSE chunks ending with [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let response = daemon.chat(&streamed);
    assert_eq!(response.status, 200);
    assert!(response.header("content-type").unwrap().starts_with("text/event-stream"));
    let data = response.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(joined, text);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap(), generated);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));

    // A seed makes sampling reproducible.
    let seeded =
        json!({ "messages": user("Write a poem."), "max_tokens": 16, "temperature": 1.0, "seed": 7 });
    let a = daemon.chat(&seeded).json()["choices"][0]["message"]["content"].clone();
    let b = daemon.chat(&seeded).json()["choices"][0]["message"]["content"].clone();
    assert_eq!(a, b);

    // A stop sequence cuts the answer before it, and the stop text is not returned.
    let long = json!({ "messages": user("Count."), "max_tokens": 24, "temperature": 0 });
    let full = daemon.chat(&long).json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let chars: Vec<char> = full.chars().collect();
    if chars.len() >= 8 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
        let cut = full.find(&stop).unwrap();
        let mut stopped = long.clone();
        stopped["stop"] = json!([stop]);
        let answer = daemon.chat(&stopped).json();
        assert_eq!(answer["choices"][0]["message"]["content"], &full[..cut], "stop {stop:?}");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    }

    // Log-probabilities: one entry per token, alternatives sorted, all ≤ 0.
    let mut with_logprobs = body.clone();
    with_logprobs["logprobs"] = json!(true);
    with_logprobs["top_logprobs"] = json!(3);
    let answer = daemon.chat(&with_logprobs).json();
    let content = answer["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, answer["usage"]["completion_tokens"].as_u64().unwrap());
    for entry in content {
        let lp = entry["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top: Vec<f64> = entry["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert_eq!(top.len(), 3);
        assert!(top.windows(2).all(|w| w[0] >= w[1]));
        // Greedy: the chosen token is the most likely one.
        assert!((lp - top[0]).abs() < 1e-4, "{entry}");
    }

    // Metrics saw all of it.
    assert!(daemon.metric("outpost_completion_tokens_total") >= generated as f64 * 2.0);
    assert!(daemon.metric("outpost_decode_tokens_per_second") > 0.0);
}

#[test]
fn bad_requests_get_openai_errors() {
    let daemon = Daemon::start(&tiny_model(1), "");
    let bad = daemon.request("POST", "/v1/chat/completions", Some("{\"messages\": [oops"));
    assert_eq!(bad.status, 400);
    let err = bad.json();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(err["error"]["code"], "invalid_json");
    assert!(err["error"]["message"].as_str().unwrap().len() > 10);

    let wrong = daemon.chat(&json!({ "messages": [] }));
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"]["param"], "messages");
    let wrong = daemon.chat(&json!({ "messages": user("hi"), "temperature": 9 }));
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"]["param"], "temperature");

    // Over the context: 400 naming both counts and the word "context", streamed or not.
    let huge = "the sea is deep and wide and blue ".repeat(200);
    for stream in [false, true] {
        let over = daemon.chat(&json!({ "messages": user(&huge), "stream": stream }));
        assert_eq!(over.status, 400, "{}", over.text());
        let err = over.json();
        assert_eq!(err["error"]["code"], "context_length_exceeded");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("context"), "{message}");
        assert!(message.contains("1024"), "{message}");
        let counted: Vec<u64> =
            message.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        assert!(counted.iter().any(|&n| n > 1024), "prompt count missing: {message}");
    }
    assert!(daemon.metric("outpost_errors_total{kind=\"context_length_exceeded\"}") >= 2.0);

    // The daemon still serves.
    assert_eq!(daemon.chat(&json!({ "messages": user("hi"), "max_tokens": 2 })).status, 200);
}

#[test]
fn four_concurrent_clients_all_succeed() {
    let daemon = Daemon::start(&tiny_model(1), "");
    let socket = daemon.socket.clone();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let body = json!({ "messages": user(&format!("Question number {i}?")), "max_tokens": 24, "stream": i % 2 == 0 });
                outpost_e2e::http::request(&socket, "POST", "/v1/chat/completions", Some(&body.to_string()))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let response = t.join().unwrap();
        assert_eq!(response.status, 200, "client {i}: {}", response.text());
        if i % 2 == 0 {
            assert_eq!(response.sse_data().last().map(String::as_str), Some("[DONE]"));
        } else {
            assert!(response.json()["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
        }
    }
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let daemon = Daemon::start(&tiny_model(1), "[api]\nqueue = 1\n");
    let socket = daemon.socket.clone();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let body = json!({ "messages": user("Go on."), "max_tokens": 400, "temperature": 0 });
                outpost_e2e::http::request(&socket, "POST", "/v1/chat/completions", Some(&body.to_string()))
            })
        })
        .collect();
    let responses: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(responses.iter().any(|r| r.status == 200));
    assert!(!busy.is_empty(), "8 clients against a queue of 1 must see a 503");
    for r in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["code"], "queue_full");
    }
}

/// Waits until no generation runs (panics after 10 s).
fn wait_idle(daemon: &Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon.metric("outpost_active_generations") > 0.0 {
        assert!(std::time::Instant::now() < deadline, "generation still running after disconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    // A long context so an uncancelled generation would run for seconds.
    let daemon = Daemon::start(&tiny_model(1), "[model]\ncontext = 4096\n");
    let max = 4000;

    // Streamed: read two chunks, hang up.
    let body =
        json!({ "messages": user("Talk forever."), "max_tokens": max, "temperature": 0, "stream": true });
    let (status, mut sse) = Sse::open(&daemon.socket, "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200);
    assert!(sse.next_chunk().is_some());
    assert!(sse.next_chunk().is_some());
    drop(sse);
    wait_idle(&daemon);
    let after_stream = daemon.metric("outpost_completion_tokens_total");
    assert!(after_stream < f64::from(max), "generated {after_stream} tokens for a client that left");

    // Not streamed: hang up while the answer is being generated.
    let body = json!({ "messages": user("Talk on and on."), "max_tokens": max, "temperature": 0 });
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.to_string().len()
    );
    std::io::Write::write_all(&mut &stream, request.as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while daemon.metric("outpost_active_generations") == 0.0 {
        assert!(std::time::Instant::now() < deadline, "generation never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    drop(stream);
    wait_idle(&daemon);
    let generated = daemon.metric("outpost_completion_tokens_total") - after_stream;
    assert!(generated < f64::from(max), "generated {generated} tokens for a client that left");
    assert_eq!(daemon.chat(&json!({ "messages": user("still there?"), "max_tokens": 2 })).status, 200);
}
