//! Chat prompts rendered with the model's own Jinja chat template (the GGUF's
//! `tokenizer.chat_template`, or template text in `model.chat_template`), by `minijinja`, as
//! llama-server's `--jinja` and Hugging Face's `apply_chat_template` do.
//!
//! The template is compiled once when the model loads; each request renders it with:
//! `messages` (OpenAI-shaped: `role`, `content`, assistant `tool_calls` with `arguments` as an
//! object, `tool` messages with `tool_call_id` and `name`), `tools` (only for a tool request
//! and a template that refers to `tools`), `add_generation_prompt`, `bos_token`, `eos_token`.
//! As in Hugging Face's environment: `trim_blocks` and `lstrip_blocks`, loop controls,
//! `raise_exception(message)`, `strftime_now(format)` (UTC), `length` of undefined = 0, a
//! `tojson` that writes what
//! Python's `json.dumps` writes (`indent`, `ensure_ascii`, `sort_keys`, `separators` accepted),
//! and Python's string and dict methods (`minijinja-contrib`'s `pycompat`).
//!
//! Rendering is deterministic for the same messages (so the prompt cache's prefix matching
//! works), unless the template itself asks for the current date with `strftime_now`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

/// The name the template is compiled under (no extension: no auto-escaping).
const NAME: &str = "chat";

/// Why a template cannot be used or applied.
#[derive(Debug, thiserror::Error)]
pub enum JinjaError {
    /// The template text is not valid Jinja (for minijinja).
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    /// Rendering failed: the template raised an exception, or uses what minijinja lacks.
    #[error("{0}")]
    Render(String),
}

/// A compiled chat template and the model's special tokens it is rendered with.
pub struct JinjaTemplate {
    /// The environment holding the compiled template and the helpers templates call.
    env: Environment<'static>,
    /// The template refers to `tools`: a tool request is rendered with the template's own tool
    /// format instead of the generic tool prompt.
    pub takes_tools: bool,
    /// The template refuses system messages: the first one is put before the first user
    /// message's text.
    merge_system: bool,
    /// The vocabulary's BOS token text (`bos_token`).
    bos: String,
    /// The vocabulary's EOS token text (`eos_token`).
    eos: String,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate").field("takes_tools", &self.takes_tools).finish_non_exhaustive()
    }
}

impl JinjaTemplate {
    /// Compiles `source`, then renders a one-message chat with it, so a template minijinja
    /// cannot run is refused at load rather than on every request.
    pub fn compile(source: &str, bos: &str, eos: &str) -> Result<Self, JinjaError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("length", length);
        env.add_filter("count", length);
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(|e| JinjaError::Compile(describe(&e)))?;
        let takes_tools = env
            .get_template(NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .map_err(|e| JinjaError::Compile(describe(&e)))?;
        let mut template =
            Self { env, takes_tools, merge_system: false, bos: bos.to_owned(), eos: eos.to_owned() };
        let user = serde_json::json!({"role": "user", "content": "hi"});
        template.render(std::slice::from_ref(&user), None, true)?;
        // Templates that refuse a system message (Gemma's) get it at the head of the first user
        // message instead, as llama-server does.
        let system = serde_json::json!({"role": "system", "content": "be brief"});
        template.merge_system = template.render(&[system, user], None, true).is_err();
        Ok(template)
    }

    /// The prompt for `messages` (and `tools`, when given), ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, JinjaError> {
        let template = self.env.get_template(NAME).map_err(|e| JinjaError::Render(describe(&e)))?;
        let merged;
        let messages = match messages.split_first() {
            Some((first, rest)) if self.merge_system && first["role"] == "system" => {
                merged = with_system_merged(first, rest);
                &merged[..]
            }
            _ => messages,
        };
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        };
        // Without tools, `tools` is undefined (not none), as in Hugging Face's rendering.
        let ctx = match tools {
            Some(tools) => minijinja::context! { tools => Value::from_serialize(tools), ..ctx },
            None => ctx,
        };
        template.render(ctx).map_err(|e| JinjaError::Render(describe(&e)))
    }
}

/// `rest` with the system message's text at the head of the first user message.
fn with_system_merged(system: &serde_json::Value, rest: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut out = rest.to_vec();
    let text = system["content"].as_str().unwrap_or_default();
    match out.iter_mut().find(|m| m["role"] == "user") {
        Some(user) => {
            let content = user["content"].as_str().unwrap_or_default();
            user["content"] = serde_json::Value::from(format!("{text}\n\n{content}"));
        }
        None => out.insert(0, serde_json::json!({"role": "user", "content": text})),
    }
    out
}

/// The source without Hugging Face's `{% generation %}` / `{% endgeneration %}` markers (they
/// mark the assistant's tokens for training and render nothing).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let end = tag.find("%}").map_or(tag.len(), |e| e + 2);
        let inner =
            tag[2..end.saturating_sub(2).max(2)].trim_matches(|c: char| c == '-' || c.is_whitespace());
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(&tag[..end]);
        }
        rest = &tag[end..];
    }
    out.push_str(rest);
    out
}

/// Whether configured template text is Jinja rather than a llama.cpp template name.
pub fn is_template_text(text: &str) -> bool {
    text.contains("{%") || text.contains("{{")
}

/// A minijinja error with its cause, on one line; a template's own `raise_exception` message
/// comes out as the template wrote it.
fn describe(err: &Error) -> String {
    let mut text = match (err.kind(), err.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) if detail.starts_with(RAISED) => {
            return detail[RAISED.len()..].to_owned();
        }
        _ => err.to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Marks an error raised by the template itself.
const RAISED: &str = "the chat template raised: ";

/// `raise_exception(message)`: Hugging Face's way for a template to refuse a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// `strftime_now(format)`: the current UTC time in a C `strftime` format (the common
/// conversions: `%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%`).
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&format, i64::try_from(secs).unwrap_or(0))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `format` for the UTC time `secs` after the Unix epoch.
fn strftime(format: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0); // 1970-01-01: Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('j') => write!(out, "{yday:03}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `length`: as Jinja2's, 0 for an undefined value (`tools | length` without tools).
fn length(value: &Value) -> Result<usize, Error> {
    if value.is_undefined() {
        return Ok(0);
    }
    value.len().ok_or_else(|| {
        Error::new(ErrorKind::InvalidOperation, format!("cannot take the length of {}", value.kind()))
    })
}

/// How `tojson` writes JSON: Python's `json.dumps` options that templates pass.
struct JsonStyle {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

/// `tojson`: JSON as Hugging Face's template environment writes it (Python's `json.dumps`,
/// `ensure_ascii=False`): `", "` and `": "` separators, no HTML escaping, keys in order.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(usize::try_from(i64::try_from(v)?).unwrap_or(0))),
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) if seps.len() == 2 => (seps[0].clone(), seps[1].clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "separators must be two strings")),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        item_sep,
        key_sep,
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(out: &mut String, value: &Value, style: &JsonStyle, level: usize) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            out.push_str(&indent.repeat(level));
        }
    };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, style, level + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, level + 1);
                match key.as_str() {
                    Some(k) => write_string(out, k, style.ensure_ascii),
                    None => write_string(out, &key.to_string(), style.ensure_ascii),
                }
                out.push_str(&style.key_sep);
                write_json(out, &value.get_item(key)?, style, level + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            let text = serde_json::to_string(value)
                .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
            out.push_str(&text);
        }
    }
    Ok(())
}

/// A JSON string literal; non-ASCII as `\uXXXX` when `ensure_ascii`.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    let quoted = serde_json::Value::from(s).to_string();
    if !ensure_ascii || quoted.is_ascii() {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
}

#[cfg(test)]
#[path = "jinja_tests.rs"]
mod tests;
