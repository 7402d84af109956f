//! The API surface apps expect, through the socket: structured output (JSON schema, streamed
//! and not), text completions, tokenize/detokenize, embeddings, unsupported fields refused by
//! name, cache keys that tell a JSON answer from a plain one, and errors a client reads even
//! when it sends its body after the headers.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::Duration;

use outpost_e2e::{tiny_model, Daemon};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": false,
    })
}

fn check_against_schema(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{text}");
    assert!(["yes", "no", "maybe"].contains(&obj["answer"].as_str().unwrap()), "{text}");
    assert!((0..=9).contains(&obj["confidence"].as_i64().unwrap()), "{text}");
}

#[test]
fn json_schema_output_follows_the_schema_streamed_and_not() {
    // The tiny model has random weights: only the grammar makes its output valid JSON.
    let daemon = Daemon::start(&tiny_model(3), "[cache]\nenabled = false\n");
    for seed in 0..3 {
        let body = json!({
            "messages": [{"role": "user", "content": "Is the sky blue?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema(), "strict": true}},
            "max_tokens": 200, "temperature": 1.0, "seed": seed,
        });
        let r = daemon.chat(&body);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["choices"][0]["finish_reason"], "stop", "{j}");
        check_against_schema(j["choices"][0]["message"]["content"].as_str().unwrap());

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let r = daemon.chat(&streamed);
        let mut text = String::new();
        for data in r.sse_data() {
            if let Ok(v) = serde_json::from_str::<Value>(&data) {
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
        }
        check_against_schema(&text);
    }
    // A GBNF grammar (llama-server's extension) constrains too.
    let r = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "Pick."}],
        "grammar": "root ::= (\"red\" | \"green\" | \"blue\")", "max_tokens": 10, "temperature": 1.0,
    }));
    let content = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(["red", "green", "blue"].contains(&content.as_str()), "{content:?}");
    // Bad grammars and formats are refused by name, nothing is silently ignored.
    let bad = daemon.chat(
        &json!({"messages": [{"role": "user", "content": "x"}], "grammar": "root ::= (((", "max_tokens": 4}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["error"]["param"], "grammar");
    let bad = daemon
        .chat(&json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}));
    assert_eq!((bad.status, bad.json()["error"]["param"].as_str()), (400, Some("response_format")));
    // A required tool call: the arguments follow the function's schema, whatever the weights.
    let weather = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
                       "required": ["city"], "additionalProperties": false}}}]);
    for stream in [false, true] {
        let r = daemon
            .chat(&json!({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": weather,
            "tool_choice": "required", "max_tokens": 400, "temperature": 1.0, "seed": 5, "stream": stream}));
        assert_eq!(r.status, 200, "{}", r.text());
        let call = if stream {
            let chunks: Vec<Value> =
                r.sse_data().iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
            assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{chunks:?}");
            // The first delta names the call; its arguments come in the deltas after it.
            let deltas: Vec<&Value> =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
            let arguments: String =
                deltas.iter().filter_map(|d| d["function"]["arguments"].as_str()).collect();
            json!({"function": {"name": deltas[0]["function"]["name"], "arguments": arguments}})
        } else {
            let j = r.json();
            assert_eq!(j["choices"][0]["finish_reason"], "tool_calls", "{j}");
            j["choices"][0]["message"]["tool_calls"][0].clone()
        };
        assert_eq!(call["function"]["name"], "get_weather", "{call}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(["Paris", "Lyon"].contains(&args["city"].as_str().unwrap()), "{args}");
    }
    let unknown = daemon.chat(&json!({"messages": [{"role": "user", "content": "x"}], "tools": weather,
        "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    assert_eq!(
        (unknown.status, unknown.json()["error"]["param"].as_str()),
        (400, Some("tools")),
        "{}",
        unknown.text()
    );
    let bias =
        daemon.chat(&json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 5}}));
    assert_eq!((bias.status, bias.json()["error"]["param"].as_str()), (400, Some("logit_bias")));
    // Penalties and min-p are accepted and change nothing about the shape.
    let r = daemon.chat(&json!({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 1.0,
        "frequency_penalty": 0.5, "repeat_penalty": 1.1, "min_p": 0.05, "max_tokens": 4}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_json_answer_is_never_served_from_the_cache_for_a_plain_question() {
    let dir = tempfile::tempdir().unwrap();
    let dropin = format!("[cache]\npath = \"{}\"\nmin_confidence = 0.0\n", dir.path().join("c.db").display());
    let daemon = Daemon::start(&tiny_model(3), &dropin);
    let plain = json!({"messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 8, "temperature": 0});
    let first = daemon.chat(&plain);
    assert_eq!(first.header("x-outpost-route"), Some("local"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon.metric("outpost_cache_stores_total{result=\"stored\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.chat(&plain).header("x-outpost-route"), Some("cache"), "the plain repeat is a hit");
    let mut as_json = plain.clone();
    as_json["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "v", "schema": schema()}});
    as_json["max_tokens"] = json!(200);
    let r = daemon.chat(&as_json);
    assert_eq!(r.header("x-outpost-route"), Some("local"), "a JSON request must not get the plain answer");
    check_against_schema(r.json()["choices"][0]["message"]["content"].as_str().unwrap());
}

#[test]
fn completions_tokenize_and_embeddings() {
    let daemon = Daemon::start(&tiny_model(3), "");
    let prompt = "Once upon a time in a quiet village";
    let r = daemon.request(
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": prompt, "max_tokens": 6, "temperature": 0}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["object"], "text_completion");
    assert!(j["choices"][0]["text"].is_string());
    let prompt_tokens = j["usage"]["prompt_tokens"].as_u64().unwrap();

    let t = daemon
        .request("POST", "/tokenize", Some(&json!({"content": prompt, "add_special": true}).to_string()))
        .json();
    let ids: Vec<i64> = t["tokens"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids.len() as u64, prompt_tokens, "tokenize counts what the completion evaluated");
    let plain = daemon.request("POST", "/tokenize", Some(&json!({"content": prompt}).to_string())).json();
    let d =
        daemon.request("POST", "/detokenize", Some(&json!({"tokens": plain["tokens"]}).to_string())).json();
    assert_eq!(d["content"].as_str().unwrap().trim_start(), prompt, "round trip");
    let pieces = daemon
        .request("POST", "/tokenize", Some(&json!({"content": "hello", "with_pieces": true}).to_string()))
        .json();
    assert!(pieces["tokens"][0]["piece"].is_string() && pieces["tokens"][0]["id"].is_number(), "{pieces}");

    let stream = daemon.request(
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": prompt, "max_tokens": 4, "stream": true}).to_string()),
    );
    assert_eq!(stream.sse_data().last().map(String::as_str), Some("[DONE]"));

    let e = daemon.request("POST", "/v1/embeddings", Some(&json!({"input": [
        "How do I reset my password?", "I forgot my password, how can I change it?", "The train to Lyon leaves at noon."
    ]}).to_string()));
    assert_eq!(e.status, 200, "{}", e.text());
    let v: Vec<Vec<f64>> = e.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert_eq!(v[0].len(), 384);
    assert!(
        cos(&v[0], &v[1]) > cos(&v[0], &v[2]) + 0.2,
        "paraphrase {} vs unrelated {}",
        cos(&v[0], &v[1]),
        cos(&v[0], &v[2])
    );
    let models = daemon.request("GET", "/v1/models", None).json();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["type"] == "embedding"), "{models}");
}

#[test]
fn errors_reach_a_client_that_sends_its_body_after_the_headers() {
    let daemon = Daemon::start(&tiny_model(3), "");
    let body = json!({"messages": [{"role": "user", "content": "hi"}]}).to_string();
    for (method, path, status) in
        [("POST", "/v1/nope", 404), ("PUT", "/v1/chat/completions", 405), ("POST", "/admin/reload", 200)]
    {
        for _ in 0..20 {
            let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            // As http.client does: the body after the headers. It must not hit a closed socket.
            s.write_all(body.as_bytes()).expect("the server closed before reading the body");
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{method} {path}: {answer}");
        }
    }
}

#[test]
fn official_ollama_python_client() {
    let daemon = Daemon::start(&tiny_model(3), "[cache]\nenabled = false\n");
    let script = outpost_e2e::repo_root().join("tests/python/ollama_client.py");
    let out =
        std::process::Command::new(outpost_e2e::python()).arg(&script).arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ollama client failed (scripts/setup.sh installs it):\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    for call in ["list", "chat", "stream", "generate", "format", "embed", "error"] {
        assert!(stdout.contains(&format!("{call} ok")), "{stdout}");
    }
}
