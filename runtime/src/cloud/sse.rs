//! Server-sent events: the framing (as the WHATWG HTML standard defines it) and the stream of
//! chat-completion chunks built on it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Future, Stream};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use super::client::Endpoint;
use super::wire::error_chain;
use super::CloudError;

/// The largest event accepted (its `data` lines together).
pub(super) const MAX_EVENT: usize = 1 << 20;

/// Splits a byte stream into the `data` of its events. Lines end in LF, CRLF or CR, also when
/// the two bytes of a CRLF arrive in different reads; comments (`:` lines, keep-alives) and
/// fields other than `data` are skipped; the `data` lines of one event are joined with LF.
#[derive(Debug)]
pub(super) struct SseParser {
    /// Received bytes not yet consumed (at most one unfinished line after a `feed`).
    buf: Vec<u8>,
    /// The current event's data so far, one LF after each line.
    data: Vec<u8>,
    /// The current event has a `data` field (even an empty one).
    has_data: bool,
    /// The last line ended in CR: an LF right after it belongs to it.
    after_cr: bool,
    /// The start of the stream was seen (a byte-order mark there is skipped).
    started: bool,
    /// The largest event accepted.
    max: usize,
}

impl SseParser {
    pub(super) fn new(max: usize) -> Self {
        Self { buf: Vec::new(), data: Vec::new(), has_data: false, after_cr: false, started: false, max }
    }

    /// Takes the next bytes; pushes the data of each event they complete onto `out`.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<String>) -> Result<(), String> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(());
            }
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            self.started = true;
        }
        let mut start = 0;
        if self.after_cr && !self.buf.is_empty() {
            self.after_cr = false;
            if self.buf[0] == b'\n' {
                start = 1;
            }
        }
        while let Some(offset) = self.buf[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = start + offset;
            let line = std::mem::take(&mut self.buf);
            let result = self.line(&line[start..end], out);
            self.buf = line;
            result?;
            start = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max + 16 {
            return Err(format!("an event line is longer than {} bytes", self.max));
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut VecDeque<String>) -> Result<(), String> {
        if line.is_empty() {
            if self.has_data {
                self.data.pop(); // The LF after the last line.
                let data = String::from_utf8(std::mem::take(&mut self.data))
                    .map_err(|_| "an event is not valid UTF-8".to_owned())?;
                out.push_back(data);
                self.has_data = false;
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            if self.data.len() + value.len() + 1 > self.max {
                return Err(format!("an event is larger than {} bytes", self.max));
            }
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
            self.has_data = true;
        }
        Ok(())
    }
}

/// A streamed chat completion: one JSON object per event, until `data: [DONE]`. It ends with an
/// error instead when the connection breaks, closes before `[DONE]`, falls silent for
/// `idle_timeout`, or sends something that is not a JSON object.
pub struct CloudStream {
    /// Where the outcome is counted and fed to the breaker.
    endpoint: Arc<Endpoint>,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    /// Events received but not yet yielded.
    ready: VecDeque<String>,
    /// Fires after `idle_timeout` without a byte.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// `[DONE]` or an error was yielded; the outcome is counted.
    finished: bool,
}

impl std::fmt::Debug for CloudStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStream").field("finished", &self.finished).finish_non_exhaustive()
    }
}

impl CloudStream {
    pub(super) fn new(endpoint: Arc<Endpoint>, response: reqwest::Response) -> Self {
        let idle_timeout = endpoint.config.idle_timeout;
        Self {
            endpoint,
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(MAX_EVENT),
            ready: VecDeque::new(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            finished: false,
        }
    }

    fn fail(&mut self, error: CloudError) -> Poll<Option<Result<Value, CloudError>>> {
        self.finished = true;
        self.endpoint.stream_ended(Some(Err(&error)));
        Poll::Ready(Some(Err(error)))
    }

    /// One event's data as a chunk.
    fn chunk(&mut self, data: &str) -> Poll<Option<Result<Value, CloudError>>> {
        if data.trim() == "[DONE]" {
            self.finished = true;
            self.endpoint.stream_ended(Some(Ok(())));
            return Poll::Ready(None);
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) if chunk.get("error").is_some() && chunk.get("choices").is_none() => {
                let message =
                    self.endpoint.status_error(reqwest::StatusCode::OK, data.as_bytes()).to_string();
                self.fail(CloudError::InvalidResponse(format!("an error event in the stream: {message}")))
            }
            Ok(chunk) if chunk.is_object() => Poll::Ready(Some(Ok(chunk))),
            Ok(_) => self.fail(CloudError::InvalidResponse("an event is not a JSON object".to_owned())),
            Err(e) => self.fail(CloudError::InvalidResponse(format!("an event is not JSON: {e}"))),
        }
    }
}

impl Stream for CloudStream {
    type Item = Result<Value, CloudError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(data) = this.ready.pop_front() {
                return this.chunk(&data);
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
                    if let Err(reason) = this.parser.feed(&bytes, &mut this.ready) {
                        return this.fail(CloudError::InvalidResponse(reason));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let message = this.endpoint.redact(error_chain(&err.without_url()));
                    return this.fail(CloudError::Connect(format!("the stream broke off: {message}")));
                }
                Poll::Ready(None) => {
                    return this
                        .fail(CloudError::Connect("the connection closed before `data: [DONE]`".to_owned()));
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return this.fail(CloudError::Timeout("idle"));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for CloudStream {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.stream_ended(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, input: &[u8]) -> Result<Vec<String>, String> {
        let mut out = VecDeque::new();
        parser.feed(input, &mut out)?;
        Ok(out.into())
    }

    const STREAM: &[u8] =
        b"\xEF\xBB\xBF: keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\nid: 7\ndata:one\ndata: two\n\n\
        data\r\rdata: cr only\r\r: comment\n\ndata: crlf\r\ndata:  lines\r\n\r\ndata: [DONE]\n\n";

    #[test]
    fn frames_events_whatever_the_line_endings() {
        let got = events(&mut SseParser::new(MAX_EVENT), STREAM).expect("valid stream");
        assert_eq!(got, ["{\"a\":1}", "one\ntwo", "", "cr only", "crlf\n lines", "[DONE]"]);
    }

    #[test]
    fn frames_the_same_events_however_the_bytes_are_split() {
        let whole = events(&mut SseParser::new(MAX_EVENT), STREAM).expect("valid stream");
        for split in 0..STREAM.len() {
            let mut parser = SseParser::new(MAX_EVENT);
            let mut got = events(&mut parser, &STREAM[..split]).expect("valid head");
            got.extend(events(&mut parser, &STREAM[split..]).expect("valid tail"));
            assert_eq!(got, whole, "split at byte {split}");
        }
        let mut parser = SseParser::new(MAX_EVENT);
        let one_by_one: Vec<String> =
            STREAM.iter().flat_map(|b| events(&mut parser, &[*b]).expect("valid byte")).collect();
        assert_eq!(one_by_one, whole);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::new(MAX_EVENT);
        assert!(events(&mut parser, b"data: {\"a\":1}\n").expect("valid").is_empty());
        assert_eq!(events(&mut parser, b"\n").expect("valid"), ["{\"a\":1}"]);
    }

    #[test]
    fn refuses_an_event_over_the_cap_even_without_a_line_end() {
        let mut parser = SseParser::new(1000);
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 600));
        big.push(b'\n');
        assert!(events(&mut parser, &big).is_ok());
        assert!(events(&mut parser, &big).expect_err("over the cap").contains("larger than 1000"));

        let mut parser = SseParser::new(1000);
        let endless = vec![b'x'; 2000];
        assert!(events(&mut parser, &endless).expect_err("line too long").contains("longer than 1000"));
    }
}
