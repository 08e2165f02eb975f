//! A small blocking HTTP/1.1 client over `std::net::TcpStream` for the dashboard's API
//! and for ChromeDriver: one request per connection (`Connection: close`), chunked
//! bodies decoded, every read bounded by a timeout. Also a reader of server-sent
//! events that hands out one event at a time.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or a failed test.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `http://host:port/...` split into `host:port` and the path.
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// url");
    match rest.split_once('/') {
        Some((host, path)) => (host.to_string(), format!("/{path}")),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn send_request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> BufReader<TcpStream> {
    let (host, path) = split(url);
    let stream = TcpStream::connect(&host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("a read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // The caller's own Host, else the one the URL names.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().expect("a second handle");
    writer
        .write_all(head.as_bytes())
        .and_then(|_| writer.write_all(body.as_bytes()))
        .unwrap_or_else(|e| panic!("send to {url}: {e}"));
    BufReader::new(stream)
}

fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a bad status line: {line:?}"));
    let mut headers = Vec::new();
    for _ in 0..200 {
        line.clear();
        reader.read_line(&mut line).expect("a header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
}

/// Reads one chunk of a chunked body; empty at the end.
fn read_chunk(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut size_line = String::new();
    reader.read_line(&mut size_line)?;
    let size =
        usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk)?;
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf)?;
    Ok(chunk)
}

/// Sends a request and reads the whole answer.
pub fn request(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> Response {
    let mut reader = send_request(url, method, headers, body);
    let (status, headers) = read_head(&mut reader);
    let mut bytes = Vec::new();
    if is_chunked(&headers) {
        for _ in 0..100_000 {
            let chunk = read_chunk(&mut reader).expect("a chunk");
            if chunk.is_empty() {
                break;
            }
            bytes.extend(chunk);
        }
    } else if let Some(length) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        bytes.resize(length, 0);
        reader.read_exact(&mut bytes).expect("a body");
    } else {
        reader.read_to_end(&mut bytes).expect("a body");
    }
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<u64>,
    /// Its `event:`.
    pub event: String,
    /// Its `data:` lines, joined.
    pub data: String,
}

/// An open event stream.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked text not yet split into events.
    buffer: String,
    /// The status the stream was opened with.
    pub status: u16,
}

impl SseStream {
    /// Opens `url` with `headers`.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut reader = send_request(url, "GET", headers, None);
        let (status, headers) = read_head(&mut reader);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        SseStream {
            chunked: is_chunked(&headers),
            reader,
            raw: Vec::new(),
            buffer: String::new(),
            status,
        }
    }

    /// Moves every complete chunk of `raw` into `buffer`; false at the last chunk.
    fn dechunk(&mut self) -> bool {
        if !self.chunked {
            let text = String::from_utf8_lossy(&self.raw).into_owned();
            self.buffer.push_str(&text);
            self.raw.clear();
            return true;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or(0);
            if size == 0 {
                return false;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return true;
            }
            let text = String::from_utf8_lossy(&self.raw[start..start + size]).into_owned();
            self.buffer.push_str(&text);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event (comments skipped), or `None` when none came within `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().parse().ok();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut bytes = vec![0; 8192];
            match self.reader.read(&mut bytes) {
                Ok(0) => return None,
                Ok(n) => {
                    self.raw.extend_from_slice(&bytes[..n]);
                    if !self.dechunk() && !self.buffer.contains("\n\n") {
                        return None;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }
}
