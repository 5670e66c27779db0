//! The outbox table itself: migrating it, checking it before relaying, releasing held rows.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::warn;

use super::database::{connect_when_reachable, Database};
use super::schema::{self, Statements};
use super::RelayError;
use crate::backoff::ExponentialBackoff;
use crate::metrics::RelayMetrics;

/// Runs the migration: creates or completes the outbox table, idempotently. An existing table
/// gets the relay's own columns and the optional columns the flags name; a column the application
/// writes that is missing, or a named column of a type the relay cannot read, is refused with
/// nothing changed (adding the one would invent data, converting the other rewrites it). Returns
/// the optional columns it added to an existing table.
pub async fn migrate(client: &mut Client, statements: &Statements) -> Result<Vec<String>, SchemaProblem> {
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    // One transaction: a failed migration leaves nothing half-made.
    let transaction = client.transaction().await.map_err(database)?;
    let present = table_columns(&transaction, &statements.table).await?;
    let mut added = Vec::new();
    if !present.is_empty() {
        column_problems(statements, &present, Stage::BeforeMigration)?;
        added = statements
            .named_columns()
            .into_iter()
            .filter(|column| column.optional && !present.iter().any(|(name, _)| name == column.name))
            .map(|column| column.name.to_owned())
            .collect();
    }
    transaction.batch_execute(&statements.migration()).await.map_err(database)?;
    transaction.commit().await.map_err(database)?;
    Ok(added)
}

/// Makes held rows (failed under the block policy) of aggregate `aggregate_id`, or of every
/// aggregate, pending again with fresh attempts, and wakes the relays; returns how many.
pub async fn release_held(client: &mut Client, statements: &Statements, aggregate_id: Option<&str>) -> Result<u64, RelayError> {
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    let transaction = client.transaction().await.map_err(database)?;
    let released = transaction.execute(&statements.release_held, &[&aggregate_id]).await.map_err(database)?;
    // The insert trigger is what wakes idle relays; without this they notice at their next poll.
    transaction.execute("SELECT pg_notify($1, '')", &[&statements.channel]).await.map_err(database)?;
    transaction.commit().await.map_err(database)?;
    Ok(released)
}

/// Problems that keep the relay from running against a table.
#[derive(Debug, thiserror::Error)]
pub enum SchemaProblem {
    #[error("outbox table {0} does not exist (run `tributary-relay migrate` first)")]
    MissingTable(String),
    #[error("outbox table {table} lacks column(s) {columns} (check the column flags, or run `tributary-relay migrate`)")]
    MissingColumns { table: String, columns: String },
    #[error(
        "outbox table {table} exists but lacks column(s) {columns}; migrate adds only the relay's own columns and the optional \
         ones (--column-headers, --column-topic, --column-created-at), never a column the application writes, and changed \
         nothing: check the column flags, or add the column(s) yourself"
    )]
    NotMigratable { table: String, columns: String },
    #[error(
        "column {column} ({flag}) of {table} is {actual}, which the relay cannot read (it takes {accepted}); migrate never \
         changes a column's type, as that rewrites its data: name another column, or convert this one yourself"
    )]
    ColumnType { table: String, column: String, flag: &'static str, actual: String, accepted: String },
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Which columns a table must have already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `migrate` adds the relay's and the optional columns; the application's must be there.
    BeforeMigration,
    /// The relay runs: every column.
    Relaying,
}

/// Checks the table and columns exist and the named columns have types the relay reads. Returns
/// the columns whose value a record needs that allow NULL (`name (--flag)`): rows with NULL there
/// cannot be published.
pub async fn check_schema(client: &Client, statements: &Statements) -> Result<Vec<String>, SchemaProblem> {
    let present = table_columns(client, &statements.table).await?;
    if present.is_empty() {
        return Err(SchemaProblem::MissingTable(statements.table.to_string()));
    }
    column_problems(statements, &present, Stage::Relaying)?;
    let table = &statements.table;
    let nullable: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 AND is_nullable = 'YES'",
            &[&table.schema.name(), &table.name.name()],
        )
        .await
        .map_err(|source| RelayError::Database { table: table.to_string(), source })?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(statements
        .named_columns()
        .iter()
        .filter(|column| column.needs_value && nullable.iter().any(|name| name == column.name))
        .map(|column| format!("{} ({})", column.name, column.flag))
        .collect())
}

/// What the relay does about a table it cannot relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSchemaProblem {
    /// Give up with the problem (a person running the relay by hand sees it at once).
    Exit,
    /// Report it on `/status` and in the log, and check again until it is gone (the relays the
    /// operator runs: a sidecar that exited would restart-loop its application's pods).
    Wait,
}

/// Connects (waiting for the database) and checks the table, until it passes (then warns about
/// the nullable columns [`check_schema`] found) or, with [`OnSchemaProblem::Exit`], until the
/// first problem.
pub async fn check_schema_until_ready(
    database: &Database,
    statements: &Statements,
    metrics: &RelayMetrics,
    on_problem: OnSchemaProblem,
) -> Result<(), SchemaProblem> {
    let mut backoff = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let client = connect_when_reachable(database).await;
        match check_schema(&client, statements).await {
            Ok(nullable) => {
                metrics.set_schema_problem(None);
                if !nullable.is_empty() {
                    warn!(
                        table = %statements.table,
                        columns = %nullable.join(", "),
                        "nullable column(s) the relay needs a value of: a row with NULL there cannot be published and goes \
                         through the failure policy (declare them NOT NULL)"
                    );
                }
                return Ok(());
            }
            Err(problem) if on_problem == OnSchemaProblem::Exit => return Err(problem),
            Err(problem) => {
                let retry_in = backoff.next_delay();
                warn!(%problem, ?retry_in, "cannot relay the outbox table yet; checking again");
                metrics.set_schema_problem(Some(problem.to_string()));
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// (name, data type) of every column of `table`; empty when it does not exist.
async fn table_columns(client: &impl tokio_postgres::GenericClient, table: &schema::Table) -> Result<Vec<(String, String)>, RelayError> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            &[&table.schema.name(), &table.name.name()],
        )
        .await
        .map_err(|source| RelayError::Database { table: table.to_string(), source })?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The first problem of a table with `present` columns (name, data type) at `stage` (pure).
fn column_problems(statements: &Statements, present: &[(String, String)], stage: Stage) -> Result<(), SchemaProblem> {
    let table = statements.table.to_string();
    let type_of = |name: &str| present.iter().find(|(column, _)| column == name).map(|(_, ty)| ty.as_str());
    let named = statements.named_columns();
    match stage {
        Stage::BeforeMigration => {
            let missing: Vec<String> = named
                .iter()
                .filter(|column| !column.optional && type_of(column.name).is_none())
                .map(|column| format!("{} ({})", column.name, column.flag))
                .collect();
            if !missing.is_empty() {
                return Err(SchemaProblem::NotMigratable { table, columns: missing.join(", ") });
            }
        }
        Stage::Relaying => {
            let missing: Vec<&str> = statements.required_columns().into_iter().filter(|name| type_of(name).is_none()).collect();
            if !missing.is_empty() {
                return Err(SchemaProblem::MissingColumns { table, columns: missing.join(", ") });
            }
        }
    }
    for column in &named {
        match type_of(column.name) {
            Some(actual) if !column.accepted.is_empty() && !column.accepted.contains(&actual) => {
                return Err(SchemaProblem::ColumnType {
                    table,
                    column: column.name.to_owned(),
                    flag: column.flag,
                    actual: actual.to_owned(),
                    accepted: column.accepted.join(" or "),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(headers: Option<&str>, created_at: Option<&str>) -> Statements {
        let column = |name: &str| schema::Ident::new("column", name).expect("valid");
        let columns = schema::Columns {
            id: column("id"),
            aggregate_type: column("aggregatetype"),
            aggregate_id: column("aggregateid"),
            event_type: column("type"),
            payload: column("data"),
            headers: headers.map(column),
            topic: None,
            created_at: created_at.map(column),
        };
        Statements::new(schema::Table::parse("outbox").expect("valid"), columns, schema::PayloadFormat::Json).expect("valid")
    }

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(name, ty)| ((*name).to_owned(), (*ty).to_owned())).collect()
    }

    #[test]
    fn migrate_needs_the_applications_columns_and_readable_types_only() {
        let application = [("id", "uuid"), ("aggregatetype", "text"), ("aggregateid", "text"), ("type", "text"), ("data", "jsonb")];
        let fine = statements(Some("headers"), Some("created_at"));
        assert!(column_problems(&fine, &columns(&application), Stage::BeforeMigration).is_ok(), "optional columns are added");
        let problem = column_problems(&fine, &columns(&application), Stage::Relaying).expect_err("not migrated yet");
        assert!(problem.to_string().contains("headers, created_at, tributary_seq"), "{problem}");

        let problem = column_problems(&fine, &columns(&application[..4]), Stage::BeforeMigration).expect_err("no payload column");
        assert!(matches!(&problem, SchemaProblem::NotMigratable { columns, .. } if columns == "data (--column-payload)"), "{problem}");

        let text_created_at = [&application[..], &[("created_at", "text")]].concat();
        let problem = column_problems(&fine, &columns(&text_created_at), Stage::BeforeMigration).expect_err("text is no timestamp");
        let text = problem.to_string();
        assert!(text.contains("created_at (--column-created-at)") && text.contains("is text") && text.contains("timestamp"), "{text}");
        let bytea_payload = [&application[..4], &[("data", "bytea")]].concat();
        assert!(matches!(
            column_problems(&fine, &columns(&bytea_payload), Stage::BeforeMigration),
            Err(SchemaProblem::ColumnType { flag: "--column-payload", .. })
        ));
    }
}
