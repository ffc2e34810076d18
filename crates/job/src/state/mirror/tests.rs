use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::oneshot;

use super::*;
use crate::state::{NewJob, open};

const PREFIX: &str = "state/job";

/// An in-memory store whose next write can be made to behave like a request the client gave
/// up on but the server still finishes: the caller's future never completes, and the write
/// lands only when the test says so.
#[derive(Debug, Default)]
struct LateStore {
    inner: Arc<InMemory>,
    /// Armed with the receiver that lets the next write land.
    stall: Mutex<Option<oneshot::Receiver<()>>>,
    /// Finished when the stalled write has landed.
    landed: Mutex<Option<oneshot::Receiver<()>>>,
}

impl std::fmt::Display for LateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LateStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for LateStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let stalled = self.stall.lock().expect("lock").take();
        let Some(release) = stalled else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let (inner, location) = (self.inner.clone(), location.clone());
        let (done, landed) = oneshot::channel();
        *self.landed.lock().expect("lock") = Some(landed);
        tokio::spawn(async move {
            let _ = release.await;
            inner
                .put_opts(&location, payload, opts)
                .await
                .expect("late put");
            let _ = done.send(());
        });
        std::future::pending().await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn object_dir(store: Arc<dyn ObjectStore>) -> ObjectDir {
    ObjectDir::with_store(store, PREFIX, "memory://state/job")
}

/// A fresh job state in `dir`; returns its manifest.
fn new_state(dir: &Path) -> Manifest {
    let job = NewJob {
        input: "in.jsonl",
        fingerprint: &crate::input::InputFingerprint::recorded("fp"),
        run_tag: "t".into(),
    };
    open(dir, job).expect("state").manifest
}

/// Appends to the three spool files (as results and a checkpoint would) and returns the
/// manifest of that checkpoint.
fn grow(dir: &Path, manifest: &mut Manifest, fill: u8, output: usize, errors: usize) -> Manifest {
    let files = SpoolFiles::in_dir(dir);
    let index = 21 * (output + errors);
    for (path, len) in [
        (&files.output, output),
        (&files.errors, errors),
        (&files.index, index),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open spool");
        f.write_all(&vec![fill; len]).expect("append");
    }
    manifest.positions.output += output as u64;
    manifest.positions.errors += errors as u64;
    manifest.positions.index += index as u64;
    manifest.checkpoints += 1;
    manifest.clone()
}

fn spool_bytes(dir: &Path) -> [Vec<u8>; 3] {
    let files = SpoolFiles::in_dir(dir);
    [&files.output, &files.errors, &files.index].map(|p| std::fs::read(p).expect("read spool"))
}

async fn remote_manifest(dir: &ObjectDir) -> RemoteManifest {
    let bytes = dir
        .get(REMOTE_MANIFEST)
        .await
        .expect("get")
        .expect("a manifest");
    serde_json::from_slice(&bytes).expect("manifest")
}

/// A job in a fresh folder with one checkpoint (100 output bytes, 10 error bytes) pushed to
/// `store`. Returns the folder, the mirror and the job's manifest (to grow it further).
async fn one_checkpoint_pushed(
    store: Arc<dyn ObjectStore>,
) -> (tempfile::TempDir, Mirror, Manifest) {
    let work = tempfile::tempdir().expect("tmp");
    let mirror = Mirror::restore(object_dir(store), work.path())
        .await
        .expect("restore");
    let mut manifest = new_state(work.path());
    let first = grow(work.path(), &mut manifest, b'a', 100, 10);
    mirror.push(work.path(), &first).await.expect("push");
    (work, mirror, manifest)
}

#[tokio::test]
async fn a_late_write_from_an_abandoned_upload_cannot_damage_the_state() {
    let store = Arc::new(LateStore::default());
    let (work, mirror, mut manifest) = one_checkpoint_pushed(store.clone()).await;

    // The next upload stalls on its first object and is given up on (a checkpoint task stopped
    // mid-upload, a timeout); the store still holds that write.
    let (release, stall) = oneshot::channel();
    *store.stall.lock().expect("lock") = Some(stall);
    let second = grow(work.path(), &mut manifest, b'b', 50, 0);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), mirror.push(work.path(), &second));
    assert!(
        gave_up.await.is_err(),
        "the stalled upload should not finish"
    );

    // The retry covers more results; then the abandoned write lands, after it.
    let third = grow(work.path(), &mut manifest, b'c', 30, 5);
    mirror.push(work.path(), &third).await.expect("push");
    let _ = release.send(());
    let landed = store.landed.lock().expect("lock").take().expect("stalled");
    landed.await.expect("the late write landed");

    // Another machine resumes from object storage: it gets exactly what the manifest says.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let restored = Mirror::restore(object_dir(store.clone()), elsewhere.path())
        .await
        .expect("restore elsewhere");
    drop(restored);
    assert_eq!(spool_bytes(elsewhere.path()), spool_bytes(work.path()));
    assert_eq!(
        Manifest::load(elsewhere.path())
            .expect("load")
            .expect("manifest"),
        third
    );
}

#[tokio::test]
async fn a_restore_refuses_segments_that_do_not_add_up_to_the_manifest() {
    let store = Arc::new(InMemory::new());
    let _pushed = one_checkpoint_pushed(store.clone()).await;
    let dir = object_dir(store.clone());
    let output = remote_manifest(&dir).await.segment(0, "output");
    dir.put(&output, vec![b'a'; 60]).await.expect("shorten");

    let elsewhere = tempfile::tempdir().expect("tmp");
    let err = match Mirror::restore(dir, elsewhere.path()).await {
        Ok(_) => panic!("a short segment was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("damaged") && err.contains("60 bytes") && err.contains("records 100"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_segment_is_reported_as_damage() {
    let store = Arc::new(InMemory::new());
    let _pushed = one_checkpoint_pushed(store.clone()).await;
    let dir = object_dir(store.clone());
    let index = remote_manifest(&dir).await.segment(0, "index");
    dir.remove(&index).await.expect("remove");

    let elsewhere = tempfile::tempdir().expect("tmp");
    match Mirror::restore(dir, elsewhere.path()).await {
        Err(StorageError::Damaged { reason, .. }) => {
            assert!(
                reason.contains(&index) && reason.contains("missing"),
                "{reason}"
            );
        }
        Err(e) => panic!("not reported as damage: {e}"),
        Ok(_) => panic!("a state without a segment was accepted"),
    }
}

#[tokio::test]
async fn a_state_written_before_segment_tags_still_restores() {
    let (work, elsewhere) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let store = Arc::new(InMemory::new());
    let mut manifest = new_state(work.path());
    let first = grow(work.path(), &mut manifest, b'a', 40, 3);
    // The earlier layout: untagged segment names and no `tags` in the manifest.
    let dir = object_dir(store.clone());
    let bytes = spool_bytes(work.path());
    for (part, content) in ["output", "errors", "index"].iter().zip(bytes) {
        let name = format!("segments/00000000.{part}");
        dir.put(&name, content).await.expect("put");
    }
    let legacy = serde_json::json!({ "manifest": first, "segments": 1 });
    dir.put(REMOTE_MANIFEST, legacy.to_string().into_bytes())
        .await
        .expect("put");

    let mirror = Mirror::restore(object_dir(store.clone()), elsewhere.path())
        .await
        .expect("restore");
    assert_eq!(spool_bytes(elsewhere.path()), spool_bytes(work.path()));
    // And the job goes on from there, under names of its own.
    let mut manifest = first.clone();
    let second = grow(elsewhere.path(), &mut manifest, b'b', 10, 0);
    mirror.push(elsewhere.path(), &second).await.expect("push");
    let again = tempfile::tempdir().expect("tmp");
    Mirror::restore(object_dir(store.clone()), again.path())
        .await
        .expect("restore again");
    assert_eq!(spool_bytes(again.path()), spool_bytes(elsewhere.path()));
}
