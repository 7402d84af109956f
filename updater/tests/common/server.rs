//! A small HTTP/1.1 file server for tests, on 127.0.0.1:0, that can misbehave on cue.
//!
//! It serves the files under a root directory (GET only, `Range: bytes=N-` honoured, one request
//! per connection, `Connection: close`), logs every request, and applies scripted faults to the
//! requests whose path ends with a given suffix: drop the connection mid-body, answer an error
//! status, ignore Range, send a wrong Content-Range, send more bytes than declared or endless
//! bytes, trickle slowly, or stall. Honest about what it skips: no keep-alive, no chunked
//! encoding, no other Range forms, no methods but GET.
//!
//! Only std: the end-to-end tests include this file too. TLS comes from a wrapper the caller
//! gives ([`Server::start_with`]).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send the headers (the full length) and this many body bytes, then close the connection.
    DropAfter(u64),
    /// Answer with this status.
    Status(u16),
    /// Ignore Range: answer 200 with the whole file.
    IgnoreRange,
    /// Answer 206 from one byte later than asked, saying so in Content-Range.
    WrongContentRange,
    /// Declare and send this many bytes more than the file holds.
    Extra(u64),
    /// No Content-Length: the file, then bytes without end, until the client hangs up.
    Endless,
    /// Send the body at this many bytes per second.
    Slow(u64),
    /// Send the headers, then nothing for this long, then close.
    Stall(Duration),
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The path asked for.
    pub path: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

impl Logged {
    /// The first byte a `Range: bytes=N-` asked for.
    pub fn range_start(&self) -> Option<u64> {
        self.range.as_deref()?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
    }
}

/// A connection, plain or wrapped (TLS).
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Turns an accepted TCP stream into the connection to speak HTTP on.
pub type Wrap = Arc<dyn Fn(TcpStream) -> std::io::Result<Box<dyn Conn>> + Send + Sync>;

struct Script {
    /// (path suffix, fault, times left).
    faults: VecDeque<(String, Fault, usize)>,
    log: Vec<Logged>,
}

/// A running server; stops accepting when dropped.
pub struct Server {
    addr: std::net::SocketAddr,
    root: PathBuf,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    scheme: &'static str,
}

impl Server {
    /// Serves `root` over plain HTTP.
    pub fn start(root: &Path) -> Self {
        Self::start_with(root, "http", Arc::new(|s| Ok(Box::new(s) as Box<dyn Conn>)))
    }

    /// Serves `root`, speaking on the connection `wrap` makes of each accepted stream.
    pub fn start_with(root: &Path, scheme: &'static str, wrap: Wrap) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script { faults: VecDeque::new(), log: Vec::new() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, r) = (script.clone(), stop.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (s, st, r, wrap) = (s.clone(), st.clone(), r.clone(), wrap.clone());
                std::thread::spawn(move || {
                    if let Ok(conn) = wrap(stream.try_clone().unwrap()) {
                        let _ = serve(conn, &r, &s, &st);
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        Self { addr, root: root.to_path_buf(), script, stop, scheme }
    }

    /// The URL of `path` (no leading slash) on this server.
    pub fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" { "localhost".to_owned() } else { self.addr.ip().to_string() };
        format!("{}://{host}:{}/{path}", self.scheme, self.addr.port())
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies `fault` to the next request whose path ends with `suffix`.
    pub fn fault(&self, suffix: &str, fault: Fault) {
        self.fault_n(suffix, fault, 1);
    }

    /// Applies `fault` to the next `times` requests whose path ends with `suffix`.
    pub fn fault_n(&self, suffix: &str, fault: Fault, times: usize) {
        self.script.lock().unwrap().faults.push_back((suffix.to_owned(), fault, times));
    }

    /// Applies `fault` to every request whose path ends with `suffix`, until [`Self::clear`].
    pub fn always(&self, suffix: &str, fault: Fault) {
        self.fault_n(suffix, fault, usize::MAX);
    }

    /// Drops every pending fault.
    pub fn clear(&self) {
        self.script.lock().unwrap().faults.clear();
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.script.lock().unwrap().log.clone()
    }

    /// The requests so far whose path ends with `suffix`.
    pub fn requests(&self, suffix: &str) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.path.ends_with(suffix)).collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_log(&self) {
        self.script.lock().unwrap().log.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn head(conn: &mut dyn Conn, status: u16, headers: &[(String, String)]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Fault",
    };
    let mut text = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    conn.write_all(text.as_bytes())
}

fn serve(conn: Box<dyn Conn>, root: &Path, script: &Mutex<Script>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    let fault = {
        let mut s = script.lock().unwrap();
        let i = s.faults.iter().position(|(suffix, _, _)| path.ends_with(suffix.as_str()));
        let fault = i.map(|i| {
            let entry = &mut s.faults[i];
            entry.2 -= 1;
            let fault = entry.1;
            if entry.2 == 0 {
                s.faults.remove(i);
            }
            fault
        });
        s.log.push(Logged { path: path.clone(), range: range.clone(), fault });
        fault
    };
    let mut conn = reader.into_inner();
    let conn = conn.as_mut();
    if let Some(Fault::Status(code)) = fault {
        head(conn, code, &[("Content-Length".into(), "6".into())])?;
        return conn.write_all(b"fault\n");
    }
    let rel = path.trim_start_matches('/').split('?').next().unwrap_or_default().to_owned();
    let Ok(body) = std::fs::read(root.join(&rel)) else {
        head(conn, 404, &[("Content-Length".into(), "0".into())])?;
        return Ok(());
    };
    let len = body.len() as u64;
    let asked =
        range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<u64>().ok());
    let mut start = match (asked, fault) {
        (Some(_), Some(Fault::IgnoreRange)) | (None, _) => None,
        (Some(n), _) if n >= len => {
            head(conn, 416, &[("Content-Range".into(), format!("bytes */{len}"))])?;
            return Ok(());
        }
        (Some(n), _) => Some(n),
    };
    if fault == Some(Fault::WrongContentRange) {
        start = Some(start.unwrap_or(0) + 1);
    }
    let from = start.unwrap_or(0);
    let mut payload = body[from as usize..].to_vec();
    let mut headers = Vec::new();
    if let Some(s) = start {
        headers.push(("Content-Range".into(), format!("bytes {s}-{}/{len}", len - 1)));
    }
    if let Some(Fault::Extra(n)) = fault {
        payload.extend(std::iter::repeat_n(0x5a, n as usize));
    }
    if fault != Some(Fault::Endless) {
        headers.push(("Content-Length".into(), payload.len().to_string()));
    }
    head(conn, if start.is_some() { 206 } else { 200 }, &headers)?;
    match fault {
        Some(Fault::DropAfter(n)) => {
            conn.write_all(&payload[..(n as usize).min(payload.len())])?;
            conn.flush()
        }
        Some(Fault::Endless) => {
            conn.write_all(&payload)?;
            let junk = vec![0x5au8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                conn.write_all(&junk)?;
            }
            Ok(())
        }
        Some(Fault::Slow(rate)) => {
            let slice = (rate / 20).max(1) as usize;
            let started = Instant::now();
            for (i, piece) in payload.chunks(slice).enumerate() {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let due = started + Duration::from_secs_f64((i * slice) as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                conn.write_all(piece)?;
                conn.flush()?;
            }
            Ok(())
        }
        Some(Fault::Stall(d)) => {
            conn.flush()?;
            std::thread::sleep(d);
            Ok(())
        }
        _ => {
            conn.write_all(&payload)?;
            conn.flush()
        }
    }
}
