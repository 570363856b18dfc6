//! A tiny HTTP/1.1 server on 127.0.0.1 for the acquire tests, with fault injection, and fixture
//! builders. It never contacts any other address.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Misbehaviour of one resource.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection after sending this many body bytes...
    pub drop_after: Option<usize>,
    /// ...for this many responses (then behave).
    pub drop_times: usize,
    /// Answer every Range request with the whole body (200).
    pub ignore_range: bool,
    /// Serve the body with one byte flipped in the middle.
    pub corrupt: bool,
    /// Always answer with this status and no body.
    pub status: Option<u16>,
    /// Answer 503 to this many requests first.
    pub fail_first: usize,
    /// Send the body in 64 KiB pieces with a pause after each, so that clients started together
    /// are downloading at the same time.
    pub paced: bool,
}

struct Resource {
    body: Arc<Vec<u8>>,
    etag: String,
    faults: Faults,
    dropped: usize,
    failed: usize,
}

/// One request as seen by the server.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path (for proxy requests, the path of the absolute URI).
    pub path: String,
    /// Whether the request line had an absolute URI (as sent to a proxy).
    pub absolute: bool,
    /// The Range header.
    pub range: Option<String>,
    /// The If-Range header.
    pub if_range: Option<String>,
}

#[derive(Default)]
struct State {
    resources: HashMap<String, Resource>,
    log: Vec<Logged>,
}

/// The server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Start on 127.0.0.1, on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `body` at `path`.
    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.put_with(path, body, Faults::default());
    }

    /// Serve `body` at `path` with `faults`.
    pub fn put_with(&self, path: &str, body: Vec<u8>, faults: Faults) {
        let etag = format!(
            "\"{:x}-{}\"",
            body.len(),
            body.iter().take(64).map(|&b| b as u64).sum::<u64>()
        );
        self.lock().resources.insert(
            path.to_string(),
            Resource {
                body: Arc::new(body),
                etag,
                faults,
                dropped: 0,
                failed: 0,
            },
        );
    }

    /// Change the faults of a resource.
    pub fn set_faults(&self, path: &str, faults: Faults) {
        if let Some(r) = self.lock().resources.get_mut(path) {
            r.faults = faults;
            r.dropped = 0;
            r.failed = 0;
        }
    }

    /// Stop serving `path` (404 from now on).
    pub fn remove(&self, path: &str) {
        self.lock().resources.remove(path);
    }

    /// Requests so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// GET requests for `path` so far.
    pub fn gets(&self, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method == "GET" && l.path == path)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let absolute = target.starts_with("http://");
    let path = if absolute {
        let rest = &target["http://".len()..];
        rest.find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string())
    } else {
        target.clone()
    };
    let range = headers.get("range").cloned();
    let if_range = headers.get("if-range").cloned();
    let plan = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            absolute,
            range: range.clone(),
            if_range: if_range.clone(),
        });
        match st.resources.get_mut(&path) {
            None => Plan::Status(404),
            Some(r) => {
                if let Some(s) = r.faults.status {
                    Plan::Status(s)
                } else if r.failed < r.faults.fail_first {
                    r.failed += 1;
                    Plan::Status(503)
                } else {
                    let drop_after = match r.faults.drop_after {
                        Some(n) if r.dropped < r.faults.drop_times && method == "GET" => {
                            r.dropped += 1;
                            Some(n)
                        }
                        _ => None,
                    };
                    Plan::Body {
                        body: r.body.clone(),
                        etag: r.etag.clone(),
                        ignore_range: r.faults.ignore_range,
                        corrupt: r.faults.corrupt,
                        paced: r.faults.paced,
                        drop_after,
                    }
                }
            }
        }
    };
    match plan {
        Plan::Status(s) => {
            let reason = match s {
                404 => "Not Found",
                503 => "Service Unavailable",
                500 => "Internal Server Error",
                _ => "Error",
            };
            let body = format!("{s} {reason}\n");
            write!(
                out,
                "HTTP/1.1 {s} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        Plan::Body {
            body,
            etag,
            ignore_range,
            corrupt,
            paced,
            drop_after,
        } => {
            let len = body.len();
            let start = range
                .as_deref()
                .filter(|_| !ignore_range)
                .filter(|_| if_range.as_deref().is_none_or(|v| v == etag))
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse::<usize>().ok());
            if start.is_some_and(|s| s >= len) {
                write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
            let from = start.unwrap_or(0);
            let head = match start {
                Some(s) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\n",
                    len - 1
                ),
                None => "HTTP/1.1 200 OK\r\n".to_string(),
            };
            write!(
                out,
                "{head}Content-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                len - from
            )?;
            if method == "HEAD" {
                return Ok(());
            }
            let mut slice = body[from..].to_vec();
            if corrupt && !body.is_empty() {
                let mid = len / 2;
                if mid >= from {
                    slice[mid - from] ^= 0xff;
                }
            }
            let n = drop_after.map_or(slice.len(), |d| d.min(slice.len()));
            if paced {
                for piece in slice[..n].chunks(64 << 10) {
                    out.write_all(piece)?;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            } else {
                out.write_all(&slice[..n])?;
            }
            out.flush()?;
            if drop_after.is_some() {
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    // Drain anything left so the client sees a clean close.
    let _ = out.shutdown(Shutdown::Write);
    let mut sink = [0u8; 256];
    let _ = reader.read(&mut sink);
    Ok(())
}

enum Plan {
    Status(u16),
    Body {
        body: Arc<Vec<u8>>,
        etag: String,
        ignore_range: bool,
        corrupt: bool,
        paced: bool,
        drop_after: Option<usize>,
    },
}

/// A raw "disk image": MBR signature, patterned data, and zero runs (to exercise holes).
pub fn image(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    for (i, chunk) in v.chunks_mut(64 << 10).enumerate() {
        if i % 3 == 1 {
            continue; // leave a zero run
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Half-compressible: small alphabet.
            *b = (x % 16) as u8;
        }
    }
    if len >= 512 {
        v[446] = 0x80;
        v[450] = 0x0c;
        v[510] = 0x55;
        v[511] = 0xaa;
    }
    v
}

/// `raw` as a multi-block .xz (1 MiB blocks, two threads), like Raspberry Pi OS images.
pub fn xz(raw: &[u8]) -> Vec<u8> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(2)
        .block_size(1 << 20)
        .preset(1)
        .encoder()
        .expect("xz encoder");
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(raw).expect("xz");
    e.finish().expect("xz")
}

/// Lower-case hex SHA-256.
pub fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Options for tests: private cache, fast retries, no proxy from the environment.
pub fn options(cache: &std::path::Path, os_list: String) -> pibake::acquire::AcquireOptions {
    pibake::acquire::AcquireOptions {
        os_list,
        cache_dir: cache.to_path_buf(),
        retries: 3,
        backoff: Duration::from_millis(5),
        timeout: Duration::from_secs(20),
        use_env_proxy: false,
        ..Default::default()
    }
}
