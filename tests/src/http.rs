//! A deliberately small HTTP/1.1 client over a Unix socket: one request per connection,
//! chunked bodies decoded, server-sent events split into their `data:` payloads.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A whole response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of a server-sent-events body.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(|s| s.trim().to_owned())
            .collect()
    }
}

fn write_request(stream: &mut UnixStream, method: &str, path: &str, body: Option<&str>) {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write request");
}

fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (status, headers)
}

/// Sends one request and reads the whole response.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    write_request(&mut stream, method, path, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        let mut sse = Sse { reader, done: false };
        while let Some(chunk) = sse.next_chunk() {
            body.extend_from_slice(&chunk);
        }
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Response { status, headers, body }
}

/// A response read incrementally (for streaming tests that stop reading early).
pub struct Sse {
    reader: BufReader<UnixStream>,
    done: bool,
}

impl Sse {
    /// Sends a request and reads only the head; the body is read with [`Sse::next_chunk`].
    pub fn open(socket: &Path, path: &str, body: &str) -> (u16, Self) {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        write_request(&mut stream, "POST", path, Some(body));
        let mut reader = BufReader::new(stream);
        let (status, _) = read_head(&mut reader);
        (status, Self { reader, done: false })
    }

    /// The next chunk of a chunked body, or `None` at its end.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0u8; size + 2];
        self.reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        if size == 0 {
            self.done = true;
            return None;
        }
        Some(chunk)
    }
}
