//! The SQL the relay runs, built once from the configured table and column names (pure).
//!
//! Names come from configuration, never from rows; they are checked against a plain-identifier
//! pattern and double-quoted, so they cannot inject SQL.

use std::fmt;

/// A plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes), stored quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is not a plain SQL identifier (letters, digits and '_', not starting with a digit, at most 63 characters)")]
pub struct IdentError {
    pub what: &'static str,
    pub name: String,
}

impl Ident {
    pub fn new(what: &'static str, name: &str) -> Result<Self, IdentError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Ident(format!("\"{name}\"")))
        } else {
            Err(IdentError { what, name: name.to_owned() })
        }
    }

    /// The bare name, for catalog lookups and messages.
    pub fn name(&self) -> &str {
        &self.0[1..self.0.len() - 1]
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: Ident,
    pub name: Ident,
}

impl Table {
    /// Parses `outbox` or `app.outbox`; the schema defaults to `public`.
    pub fn parse(qualified: &str) -> Result<Self, IdentError> {
        match qualified.split_once('.') {
            Some((schema, name)) => Ok(Table { schema: Ident::new("schema", schema)?, name: Ident::new("table", name)? }),
            None => Ok(Table { schema: Ident::new("schema", "public")?, name: Ident::new("table", qualified)? }),
        }
    }

    /// A sibling name derived from this table's, e.g. `outbox_failed`.
    fn derived(&self, suffix: &str) -> Result<Table, IdentError> {
        Ok(Table { schema: self.schema.clone(), name: Ident::new("table", &format!("{}_{suffix}", self.name.name()))? })
    }
}

/// The NOTIFY channel of a table: `tributary_outbox_<schema>_<table>`, fitted to 63 bytes
/// (`pg_notify` refuses a longer channel name, failing every INSERT).
fn channel_name(table: &Table) -> String {
    fit_identifier(format!("tributary_outbox_{}_{}", table.schema.name(), table.name.name()), "")
}

/// `name`, or past PostgreSQL's 63 bytes its start, a hash of the whole and `keep` (an ending of
/// `name` worth keeping readable): PostgreSQL would cut it, so two names that differ only after
/// byte 63 would become one. Names are ASCII, so cutting at a byte is safe.
fn fit_identifier(name: String, keep: &str) -> String {
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{}_{hash:016x}{keep}", &name[..63 - 17 - keep.len()])
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Which columns hold what. Defaults follow Debezium's outbox layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub id: Ident,
    pub aggregate_type: Ident,
    pub aggregate_id: Ident,
    pub event_type: Ident,
    pub payload: Ident,
    pub headers: Option<Ident>,
    pub topic: Option<Ident>,
    pub created_at: Option<Ident>,
}

/// How the payload column is read: `Json` from json or jsonb (or text holding JSON), published as
/// `application/json`; `Binary` from bytea, published as-is.
pub use tributary_api::outbox_relay::PayloadFormat;

/// Columns the relay itself adds to the outbox table to keep order and track failures.
pub const SEQ: &str = "tributary_seq";
pub const ATTEMPTS: &str = "tributary_attempts";
pub const NEXT_ATTEMPT_AT: &str = "tributary_next_attempt_at";
pub const LAST_ERROR: &str = "tributary_last_error";
pub const FAILED_AT: &str = "tributary_failed_at";
pub const PUBLISHED_AT: &str = "tributary_published_at";

/// Every statement the relay uses for one outbox table.
#[derive(Debug, Clone)]
pub struct Statements {
    pub table: Table,
    pub failed_table: Table,
    pub columns: Columns,
    pub format: PayloadFormat,
    /// LISTEN/NOTIFY channel woken by inserts.
    pub channel: String,
    pub claim: String,
    pub delete_published: String,
    pub mark_published: String,
    pub prune_published: String,
    pub schedule_retry: String,
    pub hold_failed: String,
    /// Moves row $1 to the failed table with error $2; moves nothing while the failed table lacks
    /// a column of the outbox table.
    pub move_failed: String,
    /// Columns of the outbox table the failed table lacks, by name.
    pub failed_table_lacks: String,
    /// Held rows (failed under the block policy) pending again with fresh attempts: those of
    /// aggregate $1, or all when $1 is NULL.
    pub release_held: String,
    pub count_pending: String,
    /// The claimed rows (sequence numbers $1) as they are now, seen by a statement of its own:
    /// see [`Recheck`](super::Recheck).
    pub recheck: String,
}

impl Statements {
    pub fn new(table: Table, columns: Columns, format: PayloadFormat) -> Result<Self, IdentError> {
        let failed_table = table.derived("failed")?;
        let channel = channel_name(&table);
        let c = &columns;
        let t = &table;
        let payload = match format {
            PayloadFormat::Json => format!("o.{}::text", c.payload),
            PayloadFormat::Binary => format!("o.{}", c.payload),
        };
        let optional_text = |column: &Option<Ident>| column.as_ref().map_or("NULL::text".to_owned(), |name| format!("o.{name}::text"));
        let created_at = c.created_at.as_ref().map_or("now()".to_owned(), |name| format!("o.{name}"));
        // One aggregate is processed by one transaction at a time (an advisory lock per aggregate,
        // held to commit), in insertion order, and never past an earlier row that is waiting for a
        // retry or has failed: that is what keeps per-aggregate order with many relays. No row
        // locks: the aggregate lock already excludes every other relay, and a row lock would cost
        // a write of each row on top of its deletion. What the claim's snapshot could not see
        // (commits of the lock's previous holder) is checked by `recheck`. $2 and $3: the
        // worker's shard (see `Shard`); CASE makes PostgreSQL test the shard before it takes the
        // lock (the order of plain AND terms is the planner's), and keeps the plan an ordered
        // index scan (the planner would guess a separate shard test very selective and sort). A row
        // without an aggregate id belongs to no aggregate: it is sharded and locked by its
        // sequence number, so that it is claimed (and fails, see `RowError::Null`) all the same.
        let claim = format!(
            "SELECT o.{id}::text, o.{agg_type}::text, o.{agg_id}::text, o.{ty}::text, {payload}, {headers}, {topic}, \
             {created_at}, o.{ATTEMPTS}, o.{SEQ} \
             FROM {t} o \
             WHERE o.{PUBLISHED_AT} IS NULL AND o.{FAILED_AT} IS NULL \
               AND (o.{NEXT_ATTEMPT_AT} IS NULL OR o.{NEXT_ATTEMPT_AT} <= now()) \
               AND NOT EXISTS (SELECT 1 FROM {t} h WHERE h.{agg_id} = o.{agg_id} AND h.{SEQ} < o.{SEQ} \
                               AND h.{PUBLISHED_AT} IS NULL \
                               AND (h.{FAILED_AT} IS NOT NULL OR h.{NEXT_ATTEMPT_AT} > now())) \
               AND CASE WHEN o.{agg_id} IS NULL THEN CASE WHEN o.{SEQ} % $2 = $3 \
                        THEN pg_try_advisory_xact_lock(hashtext('{t}'), hashtext('{SEQ} ' || o.{SEQ})) ELSE false END \
                   WHEN (hashtext(o.{agg_id}::text)::bigint & 2147483647) % $2 = $3 \
                   THEN pg_try_advisory_xact_lock(hashtext('{t}'), hashtext(o.{agg_id}::text)) ELSE false END \
             ORDER BY o.{SEQ} LIMIT $1",
            id = c.id,
            agg_type = c.aggregate_type,
            agg_id = c.aggregate_id,
            ty = c.event_type,
            headers = optional_text(&c.headers),
            topic = optional_text(&c.topic),
        );
        // Claimed rows by their sequence number (bigint, whatever the id column's type), through
        // the pending index: claimed rows are pending and locked until this transaction ends.
        let pending = format!("{PUBLISHED_AT} IS NULL AND {FAILED_AT} IS NULL");
        let by_seqs = format!("{pending} AND {SEQ} = ANY($1)");
        let by_seq = format!("{pending} AND {SEQ} = $1");
        let failed_table_lacks = format!(
            "SELECT o.attname::text FROM pg_attribute o WHERE o.attrelid = '{t}'::regclass AND o.attnum > 0 AND NOT o.attisdropped \
             AND NOT EXISTS (SELECT 1 FROM pg_attribute f WHERE f.attrelid = '{failed_table}'::regclass \
                             AND f.attname = o.attname AND f.attnum > 0 AND NOT f.attisdropped) ORDER BY o.attnum"
        );
        Ok(Statements {
            delete_published: format!("DELETE FROM {t} WHERE {by_seqs}"),
            mark_published: format!("UPDATE {t} SET {PUBLISHED_AT} = now() WHERE {by_seqs}"),
            prune_published: format!("DELETE FROM {t} WHERE {PUBLISHED_AT} < now() - make_interval(secs => $1)"),
            schedule_retry: format!(
                "UPDATE {t} SET {ATTEMPTS} = {ATTEMPTS} + 1, {LAST_ERROR} = $2, \
                 {NEXT_ATTEMPT_AT} = now() + make_interval(secs => $3) WHERE {by_seq}"
            ),
            hold_failed: format!("UPDATE {t} SET {ATTEMPTS} = {ATTEMPTS} + 1, {LAST_ERROR} = $2, {FAILED_AT} = now() WHERE {by_seq}"),
            // By column name, not position: columns `migrate` adds later come last in both tables,
            // after the failed table's own. json keeps the payload's text as it was (jsonb would
            // reformat a json column); the inner record supplies the failure columns. A column of
            // the outbox table the failed table lacks (the application added it after `migrate`)
            // would be dropped on the way: then nothing moves (see `failed_table_lacks`).
            move_failed: format!(
                "WITH moved AS (DELETE FROM {t} WHERE {by_seq} AND NOT EXISTS ({failed_table_lacks}) RETURNING *) \
                 INSERT INTO {failed_table} SELECT (json_populate_record(\
                   jsonb_populate_record(NULL::{failed_table}, jsonb_build_object('tributary_error', $2::text, 'tributary_moved_at', now())), \
                   to_json(moved))).* FROM moved"
            ),
            failed_table_lacks,
            release_held: format!(
                "UPDATE {t} SET {FAILED_AT} = NULL, {ATTEMPTS} = 0, {NEXT_ATTEMPT_AT} = NULL \
                 WHERE {FAILED_AT} IS NOT NULL AND {PUBLISHED_AT} IS NULL AND ($1::text IS NULL OR {agg_id}::text = $1)",
                agg_id = c.aggregate_id,
            ),
            count_pending: format!("SELECT count(*) FROM {t} WHERE {PUBLISHED_AT} IS NULL AND {FAILED_AT} IS NULL"),
            recheck: format!(
                "WITH live AS (SELECT {SEQ} AS seq, {agg_id} AS aggregate, {ATTEMPTS} AS attempts, \
                                 ({NEXT_ATTEMPT_AT} IS NULL OR {NEXT_ATTEMPT_AT} <= now()) AS sendable \
                               FROM {t} WHERE {by_seqs}), \
                      first_live AS (SELECT DISTINCT ON (aggregate) aggregate, seq FROM live ORDER BY aggregate, seq) \
                 SELECT live.seq, live.attempts, live.sendable, \
                        EXISTS (SELECT 1 FROM {t} e WHERE e.{agg_id} = first_live.aggregate AND e.{SEQ} < first_live.seq \
                                AND e.{PUBLISHED_AT} IS NULL) AS behind \
                 FROM live LEFT JOIN first_live ON first_live.aggregate = live.aggregate",
                agg_id = c.aggregate_id,
            ),
            claim,
            channel,
            table,
            failed_table,
            columns,
            format,
        })
    }

    /// Idempotent DDL: the outbox table (when missing, with Debezium's columns), the relay's own
    /// columns (added to an existing table too), indexes, the failed-rows table (made to take any
    /// row of the outbox table: each of its columns, none NOT NULL) and the NOTIFY trigger.
    pub fn migration(&self) -> String {
        let c = &self.columns;
        let t = &self.table;
        let payload_type = match self.format {
            PayloadFormat::Json => "jsonb",
            PayloadFormat::Binary => "bytea",
        };
        // Optional columns are added to an existing table (and its failed-rows table) too: nullable
        // or with a stable default, so PostgreSQL adds them without rewriting a row (existing
        // rows of a new created-at column get the time of the migration).
        let optional: String = [
            c.headers.as_ref().map(|headers| format!("{headers} jsonb")),
            c.topic.as_ref().map(|topic| format!("{topic} text")),
            c.created_at.as_ref().map(|created_at| format!("{created_at} timestamptz NOT NULL DEFAULT now()")),
        ]
        .into_iter()
        .flatten()
        .map(|definition| format!("ADD COLUMN IF NOT EXISTS {definition}, "))
        .collect();
        let trigger_function = Ident(format!("\"{}_notify\"", self.table.name.name()));
        let trigger = Ident(format!("\"{}_tributary_notify\"", self.table.name.name()));
        // Index names share the schema's namespace: cut by PostgreSQL, those of a long table name
        // would be one name (and only the first index made).
        let index = |suffix: &str| {
            let ending = format!("_tributary_{suffix}");
            Ident(format!("\"{}\"", fit_identifier(format!("{}{ending}", self.table.name.name()), &ending)))
        };
        let (pending_index, held_index, aggregate_index) = (index("pending"), index("held"), index("aggregate"));
        let schema = &t.schema;
        format!(
            "SET client_min_messages = warning;\n\
             CREATE TABLE IF NOT EXISTS {t} (\
               {id} uuid PRIMARY KEY, {agg_type} text NOT NULL, {agg_id} text NOT NULL, {ty} text NOT NULL, \
               {payload} {payload_type});\n\
             ALTER TABLE {t} {optional}ADD COLUMN IF NOT EXISTS {SEQ} bigserial, \
               ADD COLUMN IF NOT EXISTS {ATTEMPTS} integer NOT NULL DEFAULT 0, \
               ADD COLUMN IF NOT EXISTS {NEXT_ATTEMPT_AT} timestamptz, \
               ADD COLUMN IF NOT EXISTS {LAST_ERROR} text, \
               ADD COLUMN IF NOT EXISTS {FAILED_AT} timestamptz, \
               ADD COLUMN IF NOT EXISTS {PUBLISHED_AT} timestamptz;\n\
             CREATE INDEX IF NOT EXISTS {pending_index} ON {t} ({SEQ}) WHERE {PUBLISHED_AT} IS NULL AND {FAILED_AT} IS NULL;\n\
             CREATE INDEX IF NOT EXISTS {held_index} ON {t} ({agg_id}, {SEQ}) \
               WHERE {FAILED_AT} IS NOT NULL OR {NEXT_ATTEMPT_AT} IS NOT NULL;\n\
             CREATE INDEX IF NOT EXISTS {aggregate_index} ON {t} ({agg_id}, {SEQ}) WHERE {PUBLISHED_AT} IS NULL;\n\
             CREATE TABLE IF NOT EXISTS {failed} (LIKE {t} INCLUDING DEFAULTS);\n\
             ALTER TABLE {failed} {optional}ADD COLUMN IF NOT EXISTS tributary_error text, \
               ADD COLUMN IF NOT EXISTS tributary_moved_at timestamptz;\n\
             DO $$ DECLARE c record; BEGIN \
               FOR c IN SELECT o.attname, format_type(o.atttypid, o.atttypmod) AS type FROM pg_attribute o \
                        WHERE o.attname IN ({failed_table_lacks}) AND o.attrelid = '{t}'::regclass ORDER BY o.attnum LOOP \
                 EXECUTE format('ALTER TABLE {failed} ADD COLUMN %I %s', c.attname, c.type); \
               END LOOP; \
               FOR c IN SELECT attname FROM pg_attribute WHERE attrelid = '{failed}'::regclass AND attnum > 0 AND attnotnull \
                        AND NOT attisdropped LOOP \
                 EXECUTE format('ALTER TABLE {failed} ALTER COLUMN %I DROP NOT NULL', c.attname); \
               END LOOP; END $$;\n\
             CREATE OR REPLACE FUNCTION {schema}.{trigger_function}() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$;\n\
             DROP TRIGGER IF EXISTS {trigger} ON {t};\n\
             CREATE TRIGGER {trigger} AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{trigger_function}();\n",
            id = c.id,
            agg_type = c.aggregate_type,
            agg_id = c.aggregate_id,
            ty = c.event_type,
            payload = c.payload,
            failed = self.failed_table,
            channel = self.channel,
            failed_table_lacks = self.failed_table_lacks,
        )
    }

    /// The columns the flags name, with what the relay reads from each.
    pub fn named_columns(&self) -> Vec<NamedColumn<'_>> {
        let c = &self.columns;
        let any: &[&str] = &[];
        let payload: &[&str] = match self.format {
            PayloadFormat::Json => &["json", "jsonb", "text"],
            PayloadFormat::Binary => &["bytea"],
        };
        let mut named = vec![
            NamedColumn::new("--column-id", &c.id, any, false, true),
            NamedColumn::new("--column-aggregate-type", &c.aggregate_type, any, false, true),
            NamedColumn::new("--column-aggregate-id", &c.aggregate_id, any, false, true),
            NamedColumn::new("--column-type", &c.event_type, any, false, true),
            NamedColumn::new("--column-payload", &c.payload, payload, false, false),
        ];
        let optional: [(_, _, &'static [&'static str], bool); 3] = [
            ("--column-headers", &c.headers, &["jsonb", "json", "text"], false),
            ("--column-topic", &c.topic, &["text", "character varying"], false),
            ("--column-created-at", &c.created_at, &["timestamp with time zone", "timestamp without time zone"], true),
        ];
        named.extend(
            optional.into_iter().filter_map(|(flag, ident, accepted, needs_value)| {
                Some(NamedColumn::new(flag, ident.as_ref()?, accepted, true, needs_value))
            }),
        );
        named
    }

    /// Column names the table must have, for the start-up check.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.named_columns().iter().map(|column| column.name).collect();
        names.extend([SEQ, ATTEMPTS, NEXT_ATTEMPT_AT, LAST_ERROR, FAILED_AT, PUBLISHED_AT]);
        names
    }
}

/// A column named by a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedColumn<'a> {
    pub name: &'a str,
    pub flag: &'static str,
    /// The types (as `information_schema.columns.data_type` names them) the relay can read; empty:
    /// any (the relay reads it as text).
    pub accepted: &'static [&'static str],
    /// Optional: `migrate` adds it to an existing table (the application's own columns it never
    /// adds).
    pub optional: bool,
    /// A row with NULL here cannot be published (see `RowError::Null`).
    pub needs_value: bool,
}

impl<'a> NamedColumn<'a> {
    fn new(flag: &'static str, ident: &'a Ident, accepted: &'static [&'static str], optional: bool, needs_value: bool) -> Self {
        NamedColumn { name: ident.name(), flag, accepted, optional, needs_value }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn debezium_columns() -> Columns {
        Columns {
            id: Ident::new("column", "id").expect("valid"),
            aggregate_type: Ident::new("column", "aggregatetype").expect("valid"),
            aggregate_id: Ident::new("column", "aggregateid").expect("valid"),
            event_type: Ident::new("column", "type").expect("valid"),
            payload: Ident::new("column", "payload").expect("valid"),
            headers: None,
            topic: None,
            created_at: None,
        }
    }

    #[test]
    fn identifiers_reject_anything_but_plain_names() {
        assert_eq!(Ident::new("table", "outbox").expect("valid").to_string(), "\"outbox\"");
        for bad in ["", "1outbox", "outbox; drop table x", "out\"box", "a-b", &"x".repeat(64)] {
            assert!(Ident::new("table", bad).is_err(), "{bad:?}");
        }
        assert_eq!(Table::parse("app.outbox").expect("valid").to_string(), "\"app\".\"outbox\"");
        assert_eq!(Table::parse("outbox").expect("valid").to_string(), "\"public\".\"outbox\"");
        assert!(Table::parse("a.b.c").is_err());
    }

    #[test]
    fn claim_locks_per_aggregate_and_respects_held_rows() {
        let statements = Statements::new(Table::parse("outbox").expect("valid"), debezium_columns(), PayloadFormat::Json).expect("valid");
        let claim = &statements.claim;
        assert!(
            claim.contains("pg_try_advisory_xact_lock(hashtext('\"public\".\"outbox\"'), hashtext(o.\"aggregateid\"::text))"),
            "{claim}"
        );
        assert!(claim.ends_with("ORDER BY o.tributary_seq LIMIT $1"), "row locks would write every claimed row: {claim}");
        assert!(claim.contains("NOT EXISTS"), "{claim}");
        // Claimed rows are updated by tributary_seq through the pending index, never by id::text
        // (a sequential scan of the whole table per batch).
        assert_eq!(
            statements.delete_published,
            "DELETE FROM \"public\".\"outbox\" WHERE tributary_published_at IS NULL AND tributary_failed_at IS NULL AND tributary_seq = ANY($1)"
        );
        assert!(!statements.schedule_retry.contains("::text = $1"), "{}", statements.schedule_retry);
        assert_eq!(statements.channel, "tributary_outbox_public_outbox");
        let long = Table::parse("outbox_for_the_order_service_ledger_v2xy").expect("valid");
        let other = Table::parse("outbox_for_the_order_service_ledger_v2xz").expect("valid");
        assert_eq!(channel_name(&long).len(), 63);
        assert_ne!(channel_name(&long), channel_name(&other));
        assert_eq!(statements.failed_table.to_string(), "\"public\".\"outbox_failed\"");
    }
}
