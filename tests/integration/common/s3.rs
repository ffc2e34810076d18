//! A real S3-compatible server for the object-storage tests: moto, started per test from the
//! virtual environment `scripts/test` prepares (`BATCH_RUNNER_TEST_PYTHON`).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

pub const BUCKET: &str = "jobs";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let python = std::env::var("BATCH_RUNNER_TEST_PYTHON").unwrap_or_else(|_| {
            panic!("BATCH_RUNNER_TEST_PYTHON is not set: run the tests with scripts/test, which installs moto")
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("moto's first line");
        let endpoint = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line from moto: {first:?}"))
            .to_owned();
        let moto = Moto { child, endpoint };
        moto.request("PUT", &format!("/{BUCKET}"), b"");
        moto
    }

    /// The environment a `batch-runner` process needs to reach this store.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// A client for the tests themselves (presigning, reading results).
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("client")
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        let code = self.request("PUT", &format!("/{BUCKET}/{key}"), body).0;
        assert_eq!(code, 200, "PUT {key}");
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_at(&ObjectPath::from(key))
    }

    /// [`Moto::get`] of a path as listed by [`Moto::objects`] (already encoded).
    pub fn get_at(&self, path: &ObjectPath) -> Option<Vec<u8>> {
        block_on(async {
            let got = self.client().get(path).await.ok()?;
            got.bytes().await.ok().map(|b| b.to_vec())
        })
    }

    /// The objects right under `prefix` (not in deeper "directories"), with their sizes.
    pub fn objects(&self, prefix: &str) -> Vec<(ObjectPath, u64)> {
        block_on(async {
            let listed = self
                .client()
                .list_with_delimiter(Some(&ObjectPath::from(prefix)))
                .await
                .expect("list");
            listed
                .objects
                .into_iter()
                .map(|o| (o.location, o.size))
                .collect()
        })
    }

    /// Replaces the object at `path` (as listed by [`Moto::objects`]).
    pub fn replace(&self, path: &ObjectPath, body: Vec<u8>) {
        block_on(self.client().put(path, body.into())).expect("replace");
    }

    /// An unsigned request (moto does not check signatures): (status, body).
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let host = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connect to moto");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("write");
        s.write_all(body).expect("write body");
        let mut response = Vec::new();
        s.read_to_end(&mut response).expect("read");
        let text = String::from_utf8_lossy(&response);
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or_else(Vec::new, |(_, b)| b.as_bytes().to_vec());
        (code, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
        .block_on(future)
}
