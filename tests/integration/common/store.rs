//! A minimal HTTP object store for tests: GET serves what was PUT, PUT stores the body by path.
//! It can refuse uploads with 503 (the first N, or all until told otherwise), and it records
//! whether any upload came with chunked transfer encoding, which real S3 refuses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct State {
    pub objects: Mutex<HashMap<String, Vec<u8>>>,
    pub fail_next_puts: AtomicU32,
    pub refuse_puts: AtomicBool,
    pub puts: AtomicU32,
    pub chunked_puts: AtomicU32,
}

pub struct Store {
    pub url: String,
    pub state: Arc<State>,
}

impl Store {
    pub fn start() -> Store {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || handle(stream, &state));
            }
        });
        Store { url, state }
    }

    pub fn put_object(&self, path: &str, body: &[u8]) {
        let mut objects = self.state.objects.lock().expect("lock");
        objects.insert(path.to_owned(), body.to_vec());
    }

    pub fn object(&self, path: &str) -> Option<Vec<u8>> {
        self.state.objects.lock().expect("lock").get(path).cloned()
    }
}

fn handle(mut s: TcpStream, state: &State) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_lowercase();
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let len: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, body): (&str, Vec<u8>) = match method.as_str() {
        "PUT" => {
            state.puts.fetch_add(1, Ordering::SeqCst);
            if lower.contains("transfer-encoding: chunked") {
                state.chunked_puts.fetch_add(1, Ordering::SeqCst);
            }
            let failing = state.refuse_puts.load(Ordering::SeqCst)
                || state
                    .fail_next_puts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if failing {
                ("503 Service Unavailable", Vec::new())
            } else {
                let data = buf[head_end..head_end + len.min(buf.len() - head_end)].to_vec();
                state.objects.lock().expect("lock").insert(path, data);
                ("200 OK", Vec::new())
            }
        }
        "GET" => match state.objects.lock().expect("lock").get(&path) {
            Some(data) => ("200 OK", data.clone()),
            None => ("404 Not Found", Vec::new()),
        },
        _ => ("405 Method Not Allowed", Vec::new()),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
}
