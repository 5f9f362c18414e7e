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
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
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
