//! Tool calling on the local model.
//!
//! When the model's chat template is rendered with minijinja (`engine/jinja.rs`) and refers to
//! `tools` (Qwen 2.5, Llama 3.x, Hermes, Mistral...), a tool request is rendered by the template
//! itself: `tools`, the assistant's `tool_calls` and the `tool` results in the format the model
//! was trained on ([`structured_message`]). Otherwise (llama.cpp's built-in templates, or a
//! template without tools, such as SmolLM2's) the generic tool prompt applies:
//!
//! - the tools are described in a system message: each function's name, description and JSON
//!   schema, and the instruction to answer with `<tool_call>{"name": ..., "arguments": {...}}
//!   </tool_call>` (the Hermes/Qwen format, which small instruct models follow best);
//! - earlier assistant `tool_calls` and `role: "tool"` results are written into the
//!   conversation in the same format (`<tool_response>`), so any template renders them;
//! - `tool_choice: "required"` or a named function constrains generation with a grammar: the
//!   call's JSON must be valid for that function's parameters schema (llama.cpp's converter);
//!   `"auto"` lets the model choose; `"none"` describes no tools;
//! - the answer is parsed into OpenAI `tool_calls`: Hermes/Qwen `<tool_call>` blocks, Llama 3.x
//!   bare `{"name", "arguments"|"parameters"}` JSON, Mistral `[TOOL_CALLS] [...]`.
//!
//! The grammar of a required or named call is the Hermes format whichever template renders
//! the prompt (the parser reads it for every model). Streamed answers are in `tool_stream.rs`.

use serde_json::{json, Value};

use super::error::ApiError;

/// How the model must use the tools.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// It may call one or answer in text.
    Auto,
    /// It must call one of them.
    Required,
    /// It must call this one.
    Named(String),
}

/// The tools of a request, ready for the prompt and the grammar.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The system text describing them.
    pub prompt: String,
    /// The grammar a required or named call is generated under.
    pub grammar: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { message: message.into(), param: Some("tools") }
}

/// The functions of `tools` as (name, description, parameters schema).
fn functions(tools: &[Value]) -> Result<Vec<(String, String, Value)>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(format!("tools[{i}]: only type \"function\" is supported")));
        }
        let f = t.get("function").ok_or_else(|| invalid(format!("tools[{i}] has no `function`")))?;
        let name = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| invalid(format!("tools[{i}].function needs a `name`")))?;
        let description = f.get("description").and_then(Value::as_str).unwrap_or("").to_owned();
        let parameters =
            f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push((name.to_owned(), description, parameters));
    }
    Ok(out)
}

/// Prepares `tools` under `tool_choice`; `None` when no tool may be called.
pub fn prepare(
    tools: &[Value],
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let fns = functions(tools)?;
    let choice = match tool_choice {
        None => Choice::Auto,
        Some(Value::String(s)) if s == "auto" => Choice::Auto,
        Some(Value::String(s)) if s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "required" => Choice::Required,
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if fns.iter().any(|(n, _, _)| n == name) => Choice::Named(name.to_owned()),
            Some(name) => return Err(invalid(format!("tool_choice names `{name}`, which is not in tools"))),
            None => return Err(invalid("tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\"}}")),
        },
    };
    let mut prompt = String::from(
        "You can call functions. To call one, answer with nothing but\n<tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}\n</tool_call>\nThe functions:\n",
    );
    for (name, description, parameters) in &fns {
        prompt.push_str(&format!("- {name}: {description}\n  parameters: {parameters}\n"));
    }
    if !parallel.unwrap_or(true) {
        prompt.push_str("Call at most one function.\n");
    }
    if choice == Choice::Auto {
        prompt.push_str("If no function is needed, answer the user directly.");
    }
    let grammar = match &choice {
        Choice::Auto => None,
        Choice::Required | Choice::Named(_) => {
            // Written by hand so that `name` comes before `arguments` (serde_json sorts keys, and
            // llama.cpp's converter keeps the schema's order): the call streams from its name.
            let call = |name: &str, params: &Value| {
                format!(
                    "{{\"type\": \"object\", \"properties\": {{\"name\": {{\"const\": {}}}, \"arguments\": {params}}}, \"required\": [\"name\", \"arguments\"], \"additionalProperties\": false}}",
                    json!(name)
                )
            };
            let schema = match &choice {
                Choice::Named(n) => {
                    let (_, _, p) =
                        fns.iter().find(|(f, _, _)| f == n).ok_or_else(|| invalid("unknown tool"))?;
                    call(n, p)
                }
                _ => format!(
                    "{{\"anyOf\": [{}]}}",
                    fns.iter().map(|(n, _, p)| call(n, p)).collect::<Vec<_>>().join(", ")
                ),
            };
            let inner = llama_cpp_2::json_schema_to_grammar(&schema).map_err(|e| {
                invalid(format!("the local engine cannot constrain calls to these parameters ({e})"))
            })?;
            // The converter's root becomes the call inside the Hermes tags.
            let inner = inner.replacen("root ::=", "tool-call-json ::=", 1);
            Some(format!("root ::= \"<tool_call>\\n\" tool-call-json \"\\n</tool_call>\"\n{inner}"))
        }
    };
    Ok(Some(Tools { prompt, grammar }))
}

/// A message as Hugging Face chat templates take it: text `content`; an assistant's
/// `tool_calls` with `function.arguments` as a JSON object (OpenAI sends a string); a tool
/// result's `tool_call_id` and `name` (the called function's, found by call id in `earlier`
/// when the client left it out).
pub fn structured_message(
    role: &str,
    content: &str,
    calls: Option<&Value>,
    call_id: Option<&str>,
    name: Option<&str>,
    earlier: &[Value],
) -> Value {
    let mut message = json!({"role": role, "content": content});
    if let Some(Value::Array(calls)) = calls {
        let calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                let mut call = call.clone();
                let parsed = match call.pointer("/function/arguments") {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
                    _ => None,
                };
                if let Some(args) = parsed {
                    call["function"]["arguments"] = args;
                }
                call
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    if role == "tool" {
        if let Some(id) = call_id {
            message["tool_call_id"] = json!(id);
        }
        let called = || {
            let id = call_id?;
            earlier.iter().rev().find_map(|m| {
                m["tool_calls"]
                    .as_array()?
                    .iter()
                    .find(|c| c["id"].as_str() == Some(id))?
                    .pointer("/function/name")
                    .cloned()
            })
        };
        if let Some(name) = name.map(|n| json!(n)).or_else(called) {
            message["name"] = name;
        }
    }
    message
}

/// An assistant message's `tool_calls` as text in the prompt.
pub fn calls_as_text(calls: &Value) -> String {
    let mut text = String::new();
    for call in calls.as_array().into_iter().flatten() {
        let name = call.pointer("/function/name").cloned().unwrap_or(Value::Null);
        let args = match call.pointer("/function/arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        text.push_str(&format!("<tool_call>\n{}\n</tool_call>\n", json!({"name": name, "arguments": args})));
    }
    text
}

/// A `role: "tool"` message as text in the prompt.
pub fn result_as_text(content: &str, call_id: Option<&str>) -> String {
    match call_id {
        Some(id) => format!("<tool_response id=\"{id}\">\n{content}\n</tool_response>"),
        None => format!("<tool_response>\n{content}\n</tool_response>"),
    }
}

/// A new tool call id: 9 letters and digits, the shape Mistral's templates insist on when the
/// call comes back in the conversation (OpenAI's clients take any string).
pub fn call_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..9).map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()])).collect()
}

/// The calls in a model's answer, in OpenAI's shape, and the text outside them; `None` if it
/// holds no call.
pub fn parse_calls(text: &str) -> Option<(String, Vec<Value>)> {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut found = |v: &Value| {
        let name = v.get("name").and_then(Value::as_str)?;
        let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or(json!({}));
        let args = match args {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Some(json!({"id": call_id(), "type": "function",
                    "function": {"name": name, "arguments": args}}))
    };
    // Hermes/Qwen: <tool_call>{...}</tool_call>, possibly several.
    if text.contains("<tool_call>") {
        let mut s = text;
        while let Some(start) = s.find("<tool_call>") {
            rest.push_str(&s[..start]);
            let after = &s[start + "<tool_call>".len()..];
            let end = after.find("</tool_call>").unwrap_or(after.len());
            if let Ok(v) = serde_json::from_str::<Value>(after[..end].trim()) {
                calls.extend(found(&v));
            }
            s = after.get(end + "</tool_call>".len()..).unwrap_or("");
        }
        rest.push_str(s);
    } else if let Some(after) = text.trim_start().strip_prefix("[TOOL_CALLS]") {
        // Mistral: [TOOL_CALLS] [{"name", "arguments"}, ...]
        if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(after.trim()) {
            calls.extend(items.iter().filter_map(&mut found));
        }
    } else if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        // Llama 3.x: a bare {"name", "parameters"} object.
        calls.extend(found(&v));
    }
    (!calls.is_empty()).then(|| (rest.trim().to_owned(), calls))
}

/// A local chat completion with its text parsed: calls become `tool_calls` (`content` keeps
/// any text around them, else null) and `finish_reason` becomes `tool_calls`.
pub fn answer(mut body: Value, parallel: bool) -> Value {
    let text = body.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or("").to_owned();
    if let Some((rest, mut calls)) = parse_calls(&text) {
        if !parallel {
            calls.truncate(1);
        }
        let message = &mut body["choices"][0]["message"];
        message["content"] = if rest.is_empty() { Value::Null } else { json!(rest) };
        message["tool_calls"] = json!(calls);
        body["choices"][0]["finish_reason"] = json!("tool_calls");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_call_formats() {
        let (rest, calls) = parse_calls(
            "Sure.<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        )
        .unwrap_or_default();
        assert_eq!(rest, "Sure.");
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        let (_, calls) = parse_calls("{\"name\": \"f\", \"parameters\": {\"x\": 1}}").unwrap_or_default();
        assert_eq!(calls[0]["function"]["arguments"], "{\"x\":1}");
        let (_, calls) = parse_calls(
            "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {}}]",
        )
        .unwrap_or_default();
        assert_eq!(calls.len(), 2);
        assert!(parse_calls("The capital of France is Paris.").is_none());
        assert!(parse_calls("{\"city\": \"Paris\"}").is_none(), "JSON without a name is no call");
    }

    #[test]
    fn required_and_named_calls_get_a_grammar_none_gets_no_tools() {
        let tools = vec![json!({"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})];
        let named =
            prepare(&tools, Some(&json!({"type": "function", "function": {"name": "weather"}})), None);
        let grammar = named.ok().flatten().and_then(|t| t.grammar).unwrap_or_default();
        assert!(grammar.starts_with("root ::= \"<tool_call>\\n\" tool-call-json"), "{grammar}");
        assert!(prepare(&tools, Some(&json!("none")), None).ok().flatten().is_none());
        assert!(prepare(&tools, Some(&json!("auto")), None)
            .ok()
            .flatten()
            .is_some_and(|t| t.grammar.is_none()));
        assert!(
            prepare(&tools, Some(&json!({"type": "function", "function": {"name": "nope"}})), None).is_err()
        );
        assert!(prepare(&[json!({"type": "retrieval"})], None, None).is_err());
    }
}
