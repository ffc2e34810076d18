//! The tables, as numbered migrations applied once each at start-up. The SQL is the subset that
//! SQLite and PostgreSQL read alike (TEXT, BIGINT, `$N` parameters), so one store serves both.

/// `(version, statements)`; a version is applied in one transaction and recorded.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE files (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            -- Hidden from the API; the blob stays while an unfinished batch still reads it.
            deleted BIGINT NOT NULL DEFAULT 0,
            blob TEXT NOT NULL
        )",
            "CREATE INDEX files_by_owner ON files (owner, id)",
            "CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            input_file_id TEXT NOT NULL,
            input_blob TEXT NOT NULL,
            completion_window TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            in_progress_at BIGINT,
            finalizing_at BIGINT,
            completed_at BIGINT,
            failed_at BIGINT,
            expired_at BIGINT,
            cancelling_at BIGINT,
            cancelled_at BIGINT,
            output_file_id TEXT,
            error_file_id TEXT,
            total BIGINT NOT NULL DEFAULT 0,
            completed BIGINT NOT NULL DEFAULT 0,
            failed BIGINT NOT NULL DEFAULT 0,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0,
            reasoning_tokens BIGINT NOT NULL DEFAULT 0,
            model TEXT,
            metadata TEXT,
            errors TEXT,
            output_expires_seconds BIGINT,
            progress TEXT,
            -- The lease: who runs the batch, until when (Unix ms), and the fencing counter that
            -- every write of a worker must match.
            lease_owner TEXT,
            lease_until BIGINT NOT NULL DEFAULT 0,
            fence BIGINT NOT NULL DEFAULT 0,
            crashes BIGINT NOT NULL DEFAULT 0,
            last_error TEXT
        )",
            "CREATE INDEX batches_by_owner ON batches (owner, id)",
            "CREATE INDEX batches_by_status ON batches (status, lease_until)",
        ],
    ),
    (
        2,
        &[
            // A batch's own webhook URL (the extension field of its create request).
            "ALTER TABLE batches ADD COLUMN webhook_url TEXT",
            // The outbox: one event per batch that ended, written in the transaction that ends it,
            // delivered by whichever replica claims it (the same lease and fence as batches).
            "CREATE TABLE webhook_events (
            id TEXT PRIMARY KEY,
            batch_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            -- The batch's own URL; none: the owner's endpoint.
            url TEXT,
            -- pending, delivered, failed (retried until retry_until), no_endpoint
            state TEXT NOT NULL DEFAULT 'pending',
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL DEFAULT 0,
            retry_until BIGINT NOT NULL,
            lease_until BIGINT NOT NULL DEFAULT 0,
            fence BIGINT NOT NULL DEFAULT 0,
            last_attempt_at BIGINT,
            last_status BIGINT,
            last_error TEXT,
            delivered_at BIGINT
        )",
            "CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_at)",
            "CREATE INDEX webhook_events_by_batch ON webhook_events (batch_id)",
        ],
    ),
    (
        3,
        &[
            // Requests a batch holds, estimated at create from its file (the exact count,
            // `total`, comes with validation): the planner's work for batches not validated yet.
            "ALTER TABLE batches ADD COLUMN estimated_lines BIGINT NOT NULL DEFAULT 0",
            // Its prompt tokens, estimated from its file's size: what `--owner-max-enqueued-
            // tokens` counts.
            "ALTER TABLE batches ADD COLUMN estimated_tokens BIGINT NOT NULL DEFAULT 0",
            // Measured throughput per model (results per second, in thousandths), a decaying
            // average kept across restarts.
            "CREATE TABLE throughput (
                model TEXT PRIMARY KEY,
                milli_rps BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
        ],
    ),
    (
        4,
        &[
            // The create request asked for a pre-flight count (`x_batch_runner.preflight`):
            // 1 or 0.
            "ALTER TABLE batches ADD COLUMN preflight BIGINT NOT NULL DEFAULT 0",
            // What it found (JSON), once validation made it.
            "ALTER TABLE batches ADD COLUMN preflight_report TEXT",
        ],
    ),
    (
        5,
        &[
            // Per model: a batch's own time besides its requests (its worker starting,
            // validating, finalizing and registering its files), in milliseconds, a decaying
            // average of the batches that completed.
            "ALTER TABLE throughput ADD COLUMN overhead_ms BIGINT NOT NULL DEFAULT 0",
            // Output tokens per second, in thousandths, beside the results per second.
            "ALTER TABLE throughput ADD COLUMN milli_tps BIGINT NOT NULL DEFAULT 0",
        ],
    ),
    (
        6,
        &[
            // A create request's `Idempotency-Key`: a retried create with the same key and
            // body gets the batch the first one made (for a day).
            "CREATE TABLE idempotency_keys (
                owner TEXT NOT NULL,
                key TEXT NOT NULL,
                digest TEXT NOT NULL,
                batch_id TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (owner, key)
            )",
        ],
    ),
    (
        7,
        &[
            // The create request let the file hold several models
            // (`x_batch_runner.mixed_models`): 1 or 0.
            "ALTER TABLE batches ADD COLUMN mixed_models BIGINT NOT NULL DEFAULT 0",
            // The batch whose image, audio or video payload a file holds (deleted with it).
            "ALTER TABLE files ADD COLUMN batch_id TEXT",
        ],
    ),
];
