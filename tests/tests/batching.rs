//! Continuous batching through the socket: concurrent requests share one llama.cpp context
//! without cross-talk, a client that leaves frees its slot at once, and each slot keeps its
//! prompt cache while other apps use the others.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use outpost_e2e::{tiny_model, Daemon, Sse};
use serde_json::{json, Value};

/// Every request here must reach the engine: no answers from the response cache.
const NO_CACHE: &str = "[cache]\nenabled = false\n";

fn ask(daemon: &Daemon, system: &str, user: &str, max_tokens: u32) -> Value {
    let body = json!({
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": max_tokens, "temperature": 0,
    });
    let response = daemon.chat(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

#[test]
fn concurrent_greedy_requests_get_the_answers_they_get_alone() {
    let daemon = Daemon::start(&tiny_model(1), &format!("[api]\nparallel = 4\n{NO_CACHE}"));
    let prompts: Vec<String> =
        (0..4).map(|i| format!("Tell me about item {i} in the list of {} things.", 10 + i)).collect();
    // Alone, one after the other (each in a slot of its own: a fresh daemon per answer would
    // be the same, the slots' caches do not change greedy output).
    let alone: Vec<String> = prompts.iter().map(|p| content(&ask(&daemon, "Be brief.", p, 40))).collect();
    // All at once, with different lengths so requests join and leave mid-batch.
    let socket = daemon.socket.clone();
    let threads: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let body = json!({
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}],
                    "max_tokens": 40, "temperature": 0,
                });
                outpost_e2e::http::request(&socket, "POST", "/v1/chat/completions", Some(&body.to_string()))
            })
        })
        .collect();
    let together: Vec<String> = threads.into_iter().map(|t| content(&t.join().unwrap().json())).collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i}: batched answer differs from the answer alone");
    }
    assert!(daemon.metric("outpost_slots") == 4.0);
}

#[test]
fn a_client_that_leaves_frees_its_slot_while_the_others_go_on() {
    let daemon =
        Daemon::start(&tiny_model(1), &format!("[api]\nparallel = 2\n[model]\ncontext = 4096\n{NO_CACHE}"));
    let long = json!({"messages": [{"role": "user", "content": "Talk forever."}], "max_tokens": 3000, "temperature": 0, "stream": true});
    let (status, mut leaver) = Sse::open(&daemon.socket, "/v1/chat/completions", &long.to_string());
    assert_eq!(status, 200);
    let (status, mut stayer) = Sse::open(&daemon.socket, "/v1/chat/completions", &long.to_string());
    assert_eq!(status, 200);
    assert!(leaver.next_chunk().is_some() && stayer.next_chunk().is_some());
    // Both slots are busy; the leaver hangs up.
    drop(leaver);
    // A third request gets the freed slot and is answered while the stayer still streams.
    let third = ask(&daemon, "Be brief.", "Hello?", 8);
    assert!(third["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(stayer.next_chunk().is_some(), "the remaining stream goes on");
    assert_eq!(daemon.metric("outpost_active_generations"), 1.0, "only the stayer runs");
}

#[test]
fn apps_taking_turns_keep_their_system_prompts_cached() {
    let daemon = Daemon::start(&tiny_model(1), &format!("[api]\nparallel = 2\n{NO_CACHE}"));
    let voice = "You are the kitchen voice assistant. ".repeat(20);
    let dashboard = "You summarise the machine dashboard for the operator. ".repeat(20);
    let first = ask(&daemon, &voice, "Set a timer.", 4);
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    ask(&daemon, &dashboard, "Any alarms?", 4);
    // The voice app's prompt is still cached in its slot, although the dashboard ran since.
    let again = ask(&daemon, &voice, "Cancel the timer.", 4);
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let prompt = again["usage"]["prompt_tokens"].as_u64().unwrap();
    // The system prompt is over 90 % of the prompt; only the new user turn is evaluated.
    assert!(cached * 10 >= prompt * 9 && cached < prompt, "cached {cached} of {prompt}");
    // Exact: a repeat of the same request reuses all but the last prompt token.
    let repeat = ask(&daemon, &voice, "Cancel the timer.", 4);
    assert_eq!(repeat["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), prompt - 1);
}

#[test]
fn a_long_prompt_joining_three_streams_does_not_stop_them() {
    let daemon = Daemon::start(
        &tiny_model(1),
        &format!("[api]\nparallel = 4\n[model]\ncontext = 4096\nbatch = 64\n{NO_CACHE}"),
    );
    let alone = content(&ask(&daemon, "Be brief.", "Count with me.", 30));
    let stream = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count with me."}],
                         "max_tokens": 30, "temperature": 0, "stream": true});
    let streams: Vec<Sse> = (0..3)
        .map(|_| {
            let (status, sse) = Sse::open(&daemon.socket, "/v1/chat/completions", &stream.to_string());
            assert_eq!(status, 200);
            sse
        })
        .collect();
    // A prompt of ~1,500 tokens: 24 chunks of 64 at most, interleaved with the streams' tokens.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(150);
    let answer = ask(&daemon, "Summarise.", &long, 4);
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 1000);
    for mut sse in streams {
        let mut text = String::new();
        while let Some(chunk) = sse.next_chunk() {
            for line in String::from_utf8_lossy(&chunk).lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        assert_eq!(text, alone, "a stream that shared its batches with a long prompt");
    }
    std::thread::sleep(Duration::from_millis(50));
}
