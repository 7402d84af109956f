//! A small fake of an OpenAI-compatible cloud on 127.0.0.1, for end-to-end tests of routing.
//!
//! Honest about what it skips: plain HTTP (TLS is tested in the runtime's cloud client tests),
//! one request per connection, canned answers. It records every request so tests can check
//! what left the board.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The answer the fake cloud gives.
pub const CLOUD_ANSWER: &str = "Answer from the cloud.";

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The body (JSON for completions).
    pub body: String,
}

/// A running fake cloud.
pub struct FakeCloud {
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl FakeCloud {
    /// Starts it on an ephemeral port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let log = log.clone();
                    std::thread::spawn(move || serve(conn, &log));
                }
            }
        });
        Self { port, requests, stop }
    }

    /// The base URL for `[cloud] url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Chat-completion requests received so far.
    pub fn completions(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .cloned()
            .collect()
    }

    /// Every request received so far (probes included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A `[cloud] url` nothing listens on: connections are refused.
pub fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Recorded>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    log.lock().expect("lock").push(Recorded {
        method: method.clone(),
        path: path.clone(),
        authorization,
        body: body.clone(),
    });

    let mut conn = conn;
    if method == "GET" && path.ends_with("/models") {
        let body = r#"{"object":"list","data":[{"id":"fake-cloud-model","object":"model"}]}"#;
        let _ = write!(conn, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        return;
    }
    if method != "POST" || !path.ends_with("/chat/completions") {
        let _ = write!(conn, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    if request["stream"].as_bool() == Some(true) {
        let _ =
            write!(conn, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n");
        let words: Vec<&str> = CLOUD_ANSWER.split_inclusive(' ').collect();
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":model,
                "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        };
        let mut events = vec![chunk(serde_json::json!({"role":"assistant","content":""}), None)];
        events.extend(words.iter().map(|w| chunk(serde_json::json!({"content": w}), None)));
        events.push(chunk(serde_json::json!({}), Some("stop")));
        for event in events {
            let _ = write!(conn, "data: {event}\n\n");
            let _ = conn.flush();
        }
        let _ = write!(conn, "data: [DONE]\n\n");
        return;
    }
    let body = serde_json::json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CLOUD_ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    })
    .to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
