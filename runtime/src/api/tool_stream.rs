//! Streamed tool calls, as OpenAI streams them: per call, a first delta with `index`, `id`,
//! `type: "function"` and `function: {name, arguments: ""}`, then `function.arguments`
//! fragments as the model writes them; the last chunk says `finish_reason: "tool_calls"`.
//!
//! Hermes/Qwen calls (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, what the generic
//! tool prompt, the call grammar and Qwen-style templates produce) are streamed incrementally:
//! text before `<tool_call>` is content (a tail that could still begin the tag is held back), a
//! call starts once its name is known, and the arguments' JSON is released as it grows and ends
//! exactly where its value closes, so the closing `}` and `</tool_call>` never reach the client.
//! An answer that starts like another format (Llama 3.x bare JSON, Mistral `[TOOL_CALLS]`), or a
//! call whose JSON does not start with its name, is held and parsed whole (`tools::parse_calls`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::openai::{self, Meta};
use super::report::Report;
use super::tools;
use crate::engine::{Event, FinishReason};
use crate::metrics::Metrics;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";

/// What the parser releases, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// Answer text outside calls.
    Content(String),
    /// A call begins.
    CallStart {
        /// Its position among the answer's calls.
        index: usize,
        /// Its id.
        id: String,
        /// The function.
        name: String,
    },
    /// More of a call's arguments (JSON text).
    Arguments {
        /// The call's position.
        index: usize,
        /// The fragment.
        text: String,
    },
}

/// Where the parser is in the answer.
#[derive(Debug)]
enum State {
    /// Outside calls.
    Text,
    /// After `<tool_call>`, before the name is known.
    Opening,
    /// Inside the arguments' JSON value.
    Arguments(Scan),
    /// After a call's value (or a call beyond the first when calls are not parallel): until
    /// `</tool_call>`.
    Closing,
    /// A call whose JSON does not start with its name: parsed at `</tool_call>`.
    Block,
    /// Another format: the whole answer is parsed at the end.
    Whole,
}

/// Progress through a JSON value.
#[derive(Debug, Default)]
struct Scan {
    started: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

/// Turns an answer's text, as it arrives, into content and tool-call deltas.
#[derive(Debug)]
pub struct CallParser {
    state: State,
    /// Text received and not yet released.
    buf: String,
    /// Calls started.
    calls: usize,
    /// More than one call may be returned (`parallel_tool_calls`).
    parallel: bool,
    /// Non-whitespace content was released.
    content_started: bool,
}

impl CallParser {
    /// A parser for one answer.
    pub fn new(parallel: bool) -> Self {
        Self { state: State::Text, buf: String::new(), calls: 0, parallel, content_started: false }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Takes the next piece of the answer.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The answer ended: releases what was held.
    pub fn finish(mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Text if self.calls == 0 => self.content(&mut out, rest),
            State::Text => self.content(&mut out, rest.trim_end().to_owned()),
            State::Opening | State::Block => self.whole_call(&mut out, &rest),
            State::Arguments(_) | State::Closing => {}
            State::Whole => match tools::parse_calls(&rest) {
                Some((text, calls)) => {
                    self.content(&mut out, text);
                    for call in calls.iter().take(if self.parallel { usize::MAX } else { 1 }) {
                        self.emit_call(&mut out, &call["function"]["name"], &call["function"]["arguments"]);
                    }
                }
                None => self.content(&mut out, rest),
            },
        }
        out
    }

    /// One move; `false` when more text is needed.
    fn step(&mut self, out: &mut Vec<Delta>) -> bool {
        match &mut self.state {
            State::Text => {
                let head = self.buf.trim_start();
                if !self.content_started && self.calls == 0 {
                    if head.starts_with('{') || head.starts_with(MISTRAL) {
                        self.state = State::Whole;
                        return false;
                    }
                    if head.is_empty() || MISTRAL.starts_with(head) {
                        return false; // Undecided: whitespace, or what could begin [TOOL_CALLS].
                    }
                }
                if let Some(at) = self.buf.find(OPEN) {
                    let before = self.buf[..at].trim_end().to_owned();
                    self.buf.drain(..at + OPEN.len());
                    self.content(out, before);
                    self.state = State::Opening;
                    return true;
                }
                // Hold a tail that could begin `<tool_call>`, and trailing whitespace.
                let keep = (1..OPEN.len()).rev().find(|&n| self.buf.ends_with(&OPEN[..n])).unwrap_or(0);
                let upto = self.buf[..self.buf.len() - keep].trim_end().len();
                let text: String = self.buf.drain(..upto).collect();
                self.content(out, text);
                false
            }
            State::Opening => match name_prefix(&self.buf) {
                Prefix::More => false,
                Prefix::Other => {
                    self.state = State::Block;
                    true
                }
                Prefix::Name { name, consumed } => {
                    if self.buf[consumed..].trim_start().is_empty() {
                        return false; // Whether the arguments are a string is not known yet.
                    }
                    if self.calls > 0 && !self.parallel {
                        self.state = State::Closing;
                        return true;
                    }
                    self.buf.drain(..consumed);
                    if self.buf.trim_start().starts_with('"') {
                        // Arguments as a string: parsed whole, as the non-streamed answer is.
                        self.buf = format!("{{\"name\": {}, \"arguments\": {}", json!(name), self.buf);
                        self.state = State::Block;
                        return true;
                    }
                    out.push(Delta::CallStart { index: self.calls, id: tools::call_id(), name });
                    self.calls += 1;
                    self.state = State::Arguments(Scan::default());
                    true
                }
            },
            State::Arguments(scan) => {
                let (taken, done) = scan.advance(&self.buf);
                let text: String = self.buf.drain(..taken).collect();
                let text = if scan.started { text.trim_start().to_owned() } else { String::new() };
                if !text.is_empty() {
                    out.push(Delta::Arguments { index: self.calls - 1, text });
                }
                if done {
                    self.state = State::Closing;
                }
                done
            }
            State::Closing => match self.buf.find(CLOSE) {
                Some(at) => {
                    self.buf.drain(..at + CLOSE.len());
                    self.state = State::Text;
                    true
                }
                None => false,
            },
            State::Block => match self.buf.find(CLOSE) {
                Some(at) => {
                    let block: String = self.buf.drain(..at + CLOSE.len()).collect();
                    self.whole_call(out, &block[..at]);
                    self.state = State::Text;
                    true
                }
                None => false,
            },
            State::Whole => false,
        }
    }

    /// Content, leaving out what is only whitespace before anything was said.
    fn content(&mut self, out: &mut Vec<Delta>, text: String) {
        if text.is_empty() || (!self.content_started && text.trim().is_empty()) {
            return;
        }
        self.content_started = true;
        out.push(Delta::Content(text));
    }

    /// A call's JSON (`{"name", "arguments"|"parameters"}`) parsed whole.
    fn whole_call(&mut self, out: &mut Vec<Delta>, json_text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(json_text.trim()) else { return };
        let Some(name) = v.get("name") else { return };
        let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or(json!({}));
        let args = match args {
            Value::String(s) => Value::String(s),
            other => Value::String(other.to_string()),
        };
        if self.calls == 0 || self.parallel {
            self.emit_call(out, &name.clone(), &args);
        }
    }

    fn emit_call(&mut self, out: &mut Vec<Delta>, name: &Value, args: &Value) {
        let (Some(name), Some(args)) = (name.as_str(), args.as_str()) else { return };
        out.push(Delta::CallStart { index: self.calls, id: tools::call_id(), name: name.to_owned() });
        out.push(Delta::Arguments { index: self.calls, text: args.to_owned() });
        self.calls += 1;
    }
}

impl Scan {
    /// Bytes of `text` that belong to the value, and whether the value ended there.
    fn advance(&mut self, text: &str) -> (usize, bool) {
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if !self.started {
                if c.is_whitespace() {
                    continue;
                }
                self.started = true;
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                // A scalar value ends at the delimiter after it (not part of it).
                ',' | '}' | ']' if self.depth == 0 => return (i, true),
                c if c.is_whitespace() && self.depth == 0 => return (i, true),
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (end, true);
                    }
                }
                _ => {}
            }
        }
        (text.len(), false)
    }
}

/// How far a call's JSON has shown its name.
enum Prefix {
    /// Not far enough yet.
    More,
    /// It does not start `{"name": "...", "arguments": ` (another key order).
    Other,
    /// The name, and the bytes up to the arguments' value.
    Name { name: String, consumed: usize },
}

/// Matches `{"name": "<name>", "arguments": ` (or `"parameters"`) at the start of `text`.
fn name_prefix(text: &str) -> Prefix {
    let mut rest = text;
    let expect = |token: &str, rest: &mut &str| -> Option<bool> {
        let trimmed = rest.trim_start();
        if trimmed.len() < token.len() {
            return token.starts_with(trimmed).then_some(false);
        }
        let found = trimmed.starts_with(token);
        *rest = &trimmed[token.len().min(trimmed.len())..];
        found.then_some(true)
    };
    for token in ["{", "\"name\"", ":"] {
        match expect(token, &mut rest) {
            None => return Prefix::Other,
            Some(false) => return Prefix::More,
            Some(true) => {}
        }
    }
    let trimmed = rest.trim_start();
    if trimmed.is_empty() {
        return Prefix::More;
    }
    if !trimmed.starts_with('"') {
        return Prefix::Other;
    }
    let mut scan = Scan::default();
    let (taken, done) = scan.advance(trimmed);
    if !done {
        return Prefix::More;
    }
    let Ok(name) = serde_json::from_str::<String>(&trimmed[..taken]) else { return Prefix::Other };
    rest = &trimmed[taken..];
    for token in [",", "\"arguments\"|\"parameters\"", ":"] {
        let options: Vec<&str> = token.split('|').collect();
        let mut matched = None;
        for option in &options {
            let mut probe = rest;
            match expect(option, &mut probe) {
                Some(true) => {
                    matched = Some(Some(probe));
                    break;
                }
                Some(false) => matched = matched.or(Some(None)),
                None => {}
            }
        }
        match matched {
            None => return Prefix::Other,
            Some(None) => return Prefix::More,
            Some(Some(probe)) => rest = probe,
        }
    }
    Prefix::Name { name, consumed: text.len() - rest.len() }
}

/// The chunk of one delta.
fn chunk(meta: &Meta, delta: Delta) -> Value {
    let delta = match delta {
        Delta::Content(text) => json!({"content": text}),
        Delta::CallStart { index, id, name } => json!({"tool_calls": [{"index": index, "id": id,
            "type": "function", "function": {"name": name, "arguments": ""}}]}),
        Delta::Arguments { index, text } => json!({"tool_calls": [{"index": index,
            "function": {"arguments": text}}]}),
    };
    meta.chunk(delta, None, None)
}

/// A local answer to a tool request as server-sent events: a role chunk, content and call
/// deltas as they are generated, the finish chunk (`tool_calls` when a call was made, with the
/// `outpost` report), usage if asked, `[DONE]`. Dropping the body cancels generation.
pub fn stream(
    meta: Meta,
    mut events: UnboundedReceiver<Event>,
    parallel: bool,
    include_usage: bool,
    report: Report,
    metrics: Arc<Metrics>,
    cloud_price_per_1k: Option<f64>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let body = async_stream::stream! {
        yield Ok(data(meta.chunk(json!({"role": "assistant", "content": ""}), None, None)));
        let mut parser = CallParser::new(parallel);
        while let Some(event) = events.recv().await {
            match event {
                Event::Started { .. } => {}
                Event::Token { text, .. } => {
                    for delta in parser.push(&text) {
                        yield Ok(data(chunk(&meta, delta)));
                    }
                }
                Event::Failed(err) => {
                    yield Ok(data(ApiError::from(err).body()));
                    return;
                }
                Event::Done(done) => {
                    if done.finish_reason == FinishReason::Cancelled {
                        yield Ok(data(ApiError::ShuttingDown.body()));
                        return;
                    }
                    let called = {
                        let calls = parser.calls();
                        let rest = std::mem::replace(&mut parser, CallParser::new(parallel)).finish();
                        let more = rest.iter().filter(|d| matches!(d, Delta::CallStart { .. })).count();
                        for delta in rest {
                            yield Ok(data(chunk(&meta, delta)));
                        }
                        calls + more > 0
                    };
                    super::local::count_answer(&metrics, &done, cloud_price_per_1k);
                    let reason = if called { "tool_calls" } else { openai::finish_reason(done.finish_reason) };
                    for event in super::local::closing(&meta, reason, &report, &done, include_usage) {
                        yield Ok(event);
                    }
                    return;
                }
            }
        }
    };
    Sse::new(body).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The call list the `openai` client builds from streamed deltas: by index, id and name
    /// set once, arguments concatenated; and the content.
    fn accumulate(deltas: &[Delta]) -> (String, Vec<(String, String)>) {
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for d in deltas {
            match d {
                Delta::Content(t) => content.push_str(t),
                Delta::CallStart { index, name, .. } => {
                    assert_eq!(*index, calls.len(), "calls start in order");
                    calls.push((name.clone(), String::new()));
                }
                Delta::Arguments { index, text } => calls[*index].1.push_str(text),
            }
        }
        (content, calls)
    }

    /// Feeds `answer` in pieces of `size` bytes (on char boundaries).
    fn streamed(answer: &str, size: usize, parallel: bool) -> Vec<Delta> {
        let mut parser = CallParser::new(parallel);
        let mut out = Vec::new();
        let chars: Vec<char> = answer.chars().collect();
        for piece in chars.chunks(size) {
            out.extend(parser.push(&piece.iter().collect::<String>()));
        }
        out.extend(parser.finish());
        out
    }

    #[test]
    fn streamed_calls_accumulate_to_the_non_streamed_calls_however_the_text_is_split() {
        let answers = [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, {\"x\": \"}\\\"]\"}]}}\n</tool_call>",
            "Let me check.\n<tool_call>\n{\"name\":\"a\",\"arguments\":{}}\n</tool_call>\n<tool_call>{\"name\": \"b\", \"parameters\": {\"q\": \"<tool_call>\"}}</tool_call>",
            "<tool_call>{\"arguments\": {\"n\": 1}, \"name\": \"reordered\"}</tool_call>",
            "<tool_call>{\"name\": \"s\", \"arguments\": \"{\\\"k\\\": 2}\"}</tool_call>",
            "{\"name\": \"llama\", \"parameters\": {\"x\": 1}}",
            "[TOOL_CALLS] [{\"name\": \"m1\", \"arguments\": {}}, {\"name\": \"m2\", \"arguments\": {\"y\": true}}]",
            "The capital of France is Paris. A <tag> is not a call.",
        ];
        for answer in answers {
            let expected = tools::parse_calls(answer);
            for size in 1..=answer.len() {
                let (content, calls) = accumulate(&streamed(answer, size, true));
                match &expected {
                    None => {
                        assert_eq!(content, answer, "size {size}");
                        assert!(calls.is_empty());
                    }
                    Some((rest, want)) => {
                        assert_eq!(&content, rest, "{answer:?} in pieces of {size}");
                        assert_eq!(calls.len(), want.len(), "{answer:?} in pieces of {size}");
                        for ((name, args), w) in calls.iter().zip(want) {
                            assert_eq!(name, w["function"]["name"].as_str().unwrap_or_default());
                            let got: Value = serde_json::from_str(args)
                                .unwrap_or_else(|e| panic!("{e}: {args:?} ({answer:?}, {size})"));
                            let want: Value =
                                serde_json::from_str(w["function"]["arguments"].as_str().unwrap_or_default())
                                    .unwrap_or_default();
                            assert_eq!(got, want, "{answer:?} in pieces of {size}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn arguments_stream_as_they_are_generated_and_the_closing_tag_never_shows() {
        let mut parser = CallParser::new(true);
        assert!(parser.push("<tool_").is_empty(), "a possible tag is held");
        assert!(parser.push("call>\n{\"name\": \"get_we").is_empty(), "no call before its name is whole");
        let first = parser.push("ather\", \"arguments\": {\"ci");
        assert!(
            matches!(&first[0], Delta::CallStart { index: 0, name, .. } if name == "get_weather"),
            "{first:?}"
        );
        assert_eq!(first[1], Delta::Arguments { index: 0, text: "{\"ci".into() });
        assert_eq!(
            parser.push("ty\": \"Paris\"}"),
            [Delta::Arguments { index: 0, text: "ty\": \"Paris\"}".into() }]
        );
        assert!(parser.push("}\n</tool_call>").is_empty());
        assert!(parser.finish().is_empty());
        // Only the first call when calls are not parallel.
        let (_, calls) = accumulate(&streamed(
            "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>",
            3,
            false,
        ));
        assert_eq!(calls, [("a".to_owned(), "{}".to_owned())]);
    }
}
