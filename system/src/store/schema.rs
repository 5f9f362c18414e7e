//! The numbered schema migrations. `PRAGMA user_version` holds the number of
//! the last one applied; each runs in its own transaction together with the
//! version bump, so a crash leaves the database at a whole version.
//!
//! To extend the schema, append a migration with the next version; never edit
//! one that has shipped (databases in the field already ran it).

/// One schema step.
pub(crate) struct Migration {
    /// `user_version` after this migration; consecutive from 1.
    pub(crate) version: u32,
    /// The statements, run as one batch.
    pub(crate) sql: &'static str,
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
Migration {
    version: 1,
    // Token amounts are INTEGER (i64): the store clamps u64 inputs to i64::MAX.
    // Times are Unix milliseconds. STRICT tables reject values of the wrong type.
    sql: "
        -- One row per tenant, created on first reservation. `reserved` is the
        -- sum of the tenant's held reservations, `used` the sum of its charges.
        CREATE TABLE budgets (
            tenant          TEXT    PRIMARY KEY NOT NULL,
            limit_tokens    INTEGER NOT NULL CHECK (limit_tokens >= 0),
            used_tokens     INTEGER NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
            reserved_tokens INTEGER NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
            CHECK (used_tokens + reserved_tokens <= limit_tokens)
        ) STRICT;

        -- Every reservation ever made; rows are never deleted, so a late
        -- finish or abort of an old id finds it settled and does nothing.
        CREATE TABLE reservations (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant          TEXT    NOT NULL REFERENCES budgets (tenant),
            task_id         TEXT    NOT NULL,
            idempotency_key TEXT,
            tokens          INTEGER NOT NULL CHECK (tokens >= 0),
            state           TEXT    NOT NULL CHECK (state IN ('held', 'charged', 'released')),
            created_ms      INTEGER NOT NULL,
            settled_ms      INTEGER,
            CHECK ((state = 'held') = (settled_ms IS NULL))
        ) STRICT;
        CREATE INDEX reservations_held ON reservations (state) WHERE state = 'held';

        -- Idempotency keys, scoped per tenant. An in-flight record belongs to a
        -- held reservation; a completed one stores the response to replay.
        CREATE TABLE idempotency (
            tenant          TEXT    NOT NULL,
            key             TEXT    NOT NULL,
            fingerprint     BLOB    NOT NULL CHECK (length(fingerprint) = 32),
            reservation_id  INTEGER NOT NULL REFERENCES reservations (id),
            state           TEXT    NOT NULL CHECK (state IN ('in_flight', 'completed')),
            created_ms      INTEGER NOT NULL,
            completed_ms    INTEGER,
            response_status INTEGER CHECK (response_status BETWEEN 0 AND 65535),
            response_body   BLOB,
            PRIMARY KEY (tenant, key),
            CHECK ((state = 'completed') = (completed_ms IS NOT NULL)),
            CHECK ((state = 'completed') = (response_status IS NOT NULL AND response_body IS NOT NULL))
        ) STRICT;
        CREATE INDEX idempotency_reservation ON idempotency (reservation_id);

        -- The ledger: one row per settled reservation that was charged, so
        -- that an invariant check can sum them against budgets.used_tokens.
        CREATE TABLE charges (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant          TEXT    NOT NULL REFERENCES budgets (tenant),
            reservation_id  INTEGER NOT NULL UNIQUE REFERENCES reservations (id),
            task_id         TEXT    NOT NULL,
            idempotency_key TEXT,
            tokens          INTEGER NOT NULL CHECK (tokens >= 0),
            overage_tokens  INTEGER NOT NULL CHECK (overage_tokens >= 0),
            charged_ms      INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX charges_tenant ON charges (tenant, id);
    ",
}, Migration {
    version: 2,
    sql: "
        -- Exactly one charge per task id. Tasks get fresh ids; every attempt
        -- of a job reserves under the job's id, so this index is what makes a
        -- job that ran twice (a reclaimed lease) impossible to charge twice.
        CREATE UNIQUE INDEX charges_task ON charges (task_id);

        -- Durable jobs. `num` orders them by submission; `lease_seq` counts
        -- leases and fences workers: a worker's completion, failure or
        -- heartbeat only applies while the job still carries its lease_seq.
        CREATE TABLE jobs (
            num              INTEGER PRIMARY KEY AUTOINCREMENT,
            id               TEXT    NOT NULL UNIQUE,
            tenant           TEXT    NOT NULL,
            idempotency_key  TEXT,
            fingerprint      BLOB    CHECK (fingerprint IS NULL OR length(fingerprint) = 32),
            prompt           TEXT    NOT NULL,
            max_tokens       INTEGER NOT NULL CHECK (max_tokens > 0),
            webhook          TEXT,
            state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'dead')),
            attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            max_attempts     INTEGER NOT NULL CHECK (max_attempts > 0),
            run_after_ms     INTEGER NOT NULL,
            lease_seq        INTEGER NOT NULL DEFAULT 0,
            lease_owner      TEXT,
            lease_expires_ms INTEGER,
            last_error       TEXT,
            output           TEXT,
            charged_tokens   INTEGER CHECK (charged_tokens IS NULL OR charged_tokens >= 0),
            created_ms       INTEGER NOT NULL,
            updated_ms       INTEGER NOT NULL,
            finished_ms      INTEGER,
            UNIQUE (tenant, idempotency_key),
            CHECK ((idempotency_key IS NULL) = (fingerprint IS NULL)),
            CHECK ((state = 'running') = (lease_expires_ms IS NOT NULL)),
            CHECK ((state = 'succeeded') = (output IS NOT NULL)),
            CHECK ((state IN ('succeeded', 'dead')) = (finished_ms IS NOT NULL))
        ) STRICT;
        CREATE INDEX jobs_ready ON jobs (run_after_ms, num) WHERE state = 'queued';
        CREATE INDEX jobs_leased ON jobs (lease_expires_ms) WHERE state = 'running';
        CREATE INDEX jobs_tenant_state ON jobs (tenant, state, num);

        -- The hash-chained audit log (see crate::audit for the hash). Rows are
        -- only ever inserted. `audit_head` holds the last seq and hash, written
        -- in the same transaction as each entry, so that a truncated or edited
        -- tail is detected too.
        CREATE TABLE audit (
            seq       INTEGER PRIMARY KEY,
            ts_ms     INTEGER NOT NULL,
            actor     TEXT    NOT NULL,
            action    TEXT    NOT NULL,
            subject   TEXT    NOT NULL,
            details   TEXT    NOT NULL,
            prev_hash BLOB    NOT NULL,
            hash      BLOB    NOT NULL
        ) STRICT;
        CREATE TABLE audit_head (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            last_seq  INTEGER NOT NULL CHECK (last_seq >= 0),
            last_hash BLOB    NOT NULL
        ) STRICT;
        INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, zeroblob(32));
    ",
}, Migration {
    version: 3,
    sql: "
        -- Keys issued at run time. Only the SHA-256 of a key is kept; the
        -- plaintext was shown once. A rotated key names its successor's
        -- predecessor (`rotated_from` on the successor) and keeps working until
        -- `overlap_until_ms`; a revoked one stops at `revoked_ms`. Rows are
        -- never deleted, so the audit log's key ids always resolve.
        CREATE TABLE api_keys (
            id               TEXT    PRIMARY KEY NOT NULL,
            tenant           TEXT    NOT NULL,
            role             TEXT    NOT NULL,
            sha256           BLOB    NOT NULL UNIQUE CHECK (length(sha256) = 32),
            created_ms       INTEGER NOT NULL,
            expires_ms       INTEGER,
            revoked_ms       INTEGER,
            rotated_from     TEXT    REFERENCES api_keys (id),
            overlap_until_ms INTEGER,
            last_used_ms     INTEGER,
            CHECK (expires_ms IS NULL OR expires_ms > created_ms)
        ) STRICT;
        CREATE INDEX api_keys_tenant ON api_keys (tenant, created_ms);
        CREATE UNIQUE INDEX api_keys_successor ON api_keys (rotated_from) WHERE rotated_from IS NOT NULL;
    ",
},
Migration {
    version: 4,
    sql: "
        -- The webhook outbox: one row per terminal transition of a job with a
        -- webhook, inserted in that transition's transaction. `id` is the
        -- delivery id receivers deduplicate by; rows are never deleted.
        CREATE TABLE webhook_deliveries (
            id              TEXT    PRIMARY KEY NOT NULL,
            job_id          TEXT    NOT NULL REFERENCES jobs (id),
            tenant          TEXT    NOT NULL,
            url             TEXT    NOT NULL,
            event           TEXT    NOT NULL,
            payload         TEXT    NOT NULL,
            state           TEXT    NOT NULL
                            CHECK (state IN ('pending', 'delivered', 'failed', 'refused')),
            attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_attempt_ms INTEGER,
            last_status     INTEGER,
            last_error      TEXT,
            created_ms      INTEGER NOT NULL,
            delivered_ms    INTEGER,
            CHECK ((state = 'pending') = (next_attempt_ms IS NOT NULL))
        ) STRICT;
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms)
            WHERE state = 'pending';
        CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, created_ms);
    ",
}];

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_consecutively_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }
}
