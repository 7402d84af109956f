//! A fake OpenAI-compatible cloud on 127.0.0.1, speaking just enough HTTP/1.1 to script faults
//! byte by byte. What it skips: keep-alive (one request per connection, `Connection: close`),
//! request bodies other than `Content-Length`, and HTTP/2.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A request the fake received.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// One step of an answer.
enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Keep the connection open and say nothing more.
    Hang,
}

/// A scripted answer; the connection is closed after the last step.
pub(super) struct Reply(Vec<Step>);

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::json_with(status, &[], body)
    }

    pub fn json_with(status: u16, headers: &[(&str, &str)], body: Value) -> Self {
        let body = body.to_string();
        let mut head = format!(
            "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        Self(vec![Step::Write(format!("{head}\r\n{body}").into_bytes())])
    }

    /// An event stream, each part written as its own chunk after a short pause; `complete`:
    /// the chunked body is terminated, else the connection is simply dropped.
    pub fn sse(parts: &[&[u8]], complete: bool) -> Self {
        let mut steps = vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec(),
        )];
        for part in parts {
            let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
            chunk.extend_from_slice(part);
            chunk.extend_from_slice(b"\r\n");
            steps.push(Step::Pause(Duration::from_millis(5)));
            steps.push(Step::Write(chunk));
        }
        if complete {
            steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
        }
        Self(steps)
    }

    /// Reads the request and never answers.
    pub fn hang() -> Self {
        Self(vec![Step::Hang])
    }

    /// Sends the head of an event stream, then nothing.
    pub fn sse_then_hang() -> Self {
        let mut reply = Self::sse(&[], false);
        reply.0.push(Step::Hang);
        reply
    }
}

/// A chat completion answering `content`.
pub(super) fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

/// Decides the answer to a request, given how many earlier requests had the same path.
pub(super) type Script = Arc<dyn Fn(usize, &Request) -> Reply + Send + Sync>;

pub(super) struct FakeCloud {
    pub addr: SocketAddr,
    script: Script,
    tls: Option<TlsAcceptor>,
    requests: Arc<Mutex<Vec<Request>>>,
    task: Option<JoinHandle<()>>,
}

impl FakeCloud {
    pub async fn start(script: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(Arc::new(script), None).await
    }

    pub async fn start_tls(
        acceptor: TlsAcceptor,
        script: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(Arc::new(script), Some(acceptor)).await
    }

    async fn start_with(script: Script, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake cloud");
        let addr = listener.local_addr().expect("the fake's address");
        let mut fake = Self { addr, script, tls, requests: Arc::default(), task: None };
        fake.serve(listener);
        fake
    }

    /// The base URL, as `cloud.url` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Requests received on `path` (e.g. `/v1/chat/completions`).
    pub fn hits(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }

    /// Closes the listener and every connection: connections are refused from now on.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let mut tries = 0;
        while let Err(err) = socket.bind(self.addr) {
            tries += 1;
            assert!(tries < 50, "cannot bind {} again: {err}", self.addr);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.serve(socket.listen(64).expect("listen"));
    }

    fn serve(&mut self, listener: TcpListener) {
        let (script, tls, requests) = (self.script.clone(), self.tls.clone(), self.requests.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when the task is aborted) ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (script, tls, requests) = (script.clone(), tls.clone(), requests.clone());
                connections.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                answer(stream, &script, &requests).await;
                            }
                        }
                        None => answer(tcp, &script, &requests).await,
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    script: &Script,
    requests: &Mutex<Vec<Request>>,
) {
    let Some(request) = read_request(&mut io).await else { return };
    let earlier = {
        let mut requests = requests.lock().unwrap_or_else(PoisonError::into_inner);
        let earlier = requests.iter().filter(|r| r.path == request.path).count();
        requests.push(request.clone());
        earlier
    };
    let Reply(steps) = script(earlier, &request);
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
            Step::Pause(pause) => tokio::time::sleep(pause).await,
            Step::Hang => std::future::pending::<()>().await,
        }
    }
    let _ = io.shutdown().await;
}

async fn read_request<S: AsyncRead + Unpin>(io: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?.to_owned(), request_line.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = Request { method, path, headers, body: buf[head_end + 4..].to_vec() };
    let length: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while request.body.len() < length {
        let mut chunk = [0; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.body.extend_from_slice(&chunk[..n]);
    }
    Some(request)
}
