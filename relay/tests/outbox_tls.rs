//! TLS between the relay and PostgreSQL, with the real binary: against the TLS-only cluster of
//! `scripts/postgres-tls.sh` (a CA of its own, a server certificate naming `localhost` only, and
//! database `certdb`, which takes client certificates only), and against a server without TLS (a
//! proxy in front of the test database that answers the TLS request with `N`, as PostgreSQL with
//! `ssl = off` does; the test database itself may well have TLS on, as Debian's does).
//! Environment: as in `outbox_broker.rs`, plus `TRIBUTARY_TEST_TLS_DATABASE_URL` and
//! `TRIBUTARY_TEST_TLS_DIR` (`scripts/test.sh` sets them).

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PARTITIONS: i32 = 4;
/// How long a one-off command may take to connect (or give up).
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// `tributary-relay migrate` of `table` at `url`, plus `extra` flags: its exit code and stderr.
async fn migrate_at(url: &str, table: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args: Vec<String> = ["migrate", "--database-url", url, "--table", table].map(str::to_owned).into();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    run_relay_to_exit(&args, COMMAND_LIMIT).await
}

fn relay_args(topic: &str) -> Vec<String> {
    ["--route".to_owned(), format!("Order={topic}"), "--poll-interval".to_owned(), "200ms".to_owned()].into()
}

/// `require`: encrypted (the server takes nothing else) without checking the certificate; rows
/// reach Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_connects_over_tls_and_relays() {
    let test = "require_connects_over_tls_and_relays";
    let Some(env) = test_env(test, false) else { return };
    let Some(tls) = tls_database(test) else { return };
    // The premise: this server refuses plain text.
    let plain = tributary_relay::outbox::Database::new(&tls.url("localhost", "postgres", "sslmode=disable"), Default::default())
        .expect("a valid URL")
        .connect()
        .await
        .expect_err("a plain-text session");
    assert!(plain.to_string().contains("no encryption"), "{plain}");

    let env = TestEnv { database_url: tls.url("localhost", "postgres", "sslmode=require"), ..env };
    let table = table_name("tls_require");
    let _table = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let topic = topic_name("tls_require");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
    let relay = Relay::spawn(&env, &table, &relay_args(&topic));

    let plan = WriterPlan {
        table: table.clone(),
        aggregate_type: "Order".into(),
        aggregates: (0..3).map(|a| format!("Order-{a}")).collect(),
        rows_per_aggregate: 10,
        pause: Duration::ZERO,
    };
    let inserted = write(env.database_url.clone(), plan, Arc::new(AtomicBool::new(false)), Sink::default()).await;
    let db = pg(&env.database_url).await;
    assert!(wait_until_empty(&db, &table, Duration::from_secs(60)).await, "rows left in {table}\n{}", relay.log_tail(25));
    let ids: HashSet<String> = inserted.iter().map(|row| row.id.clone()).collect();
    let reader = Collector::read_back(&env.bootstrap_servers, &[topic], &ids, Duration::from_secs(60)).await;
    assert_eq!(reader.seen_ids(), ids, "every row in Kafka\n{}", relay.log_tail(25));
}

/// `verify-full` takes the server whose certificate chains to the CA and names the host it
/// connected to; elsewhere it refuses, naming the cause. `verify-ca` checks the chain only; a CA
/// that did not sign the certificate is refused by both, and by `require` given that CA (as
/// libpq). The flags' files replace the URL's; `certdb` wants the client certificate; a password
/// (SCRAM) login binds itself to the TLS channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_modes_check_the_chain_and_the_host_name() {
    let Some(tls) = tls_database("verify_modes_check_the_chain_and_the_host_name") else { return };
    let table = table_name("tls_verify");
    let _table = TableGuard::new(&tls.url("localhost", "postgres", "sslmode=require"), &table);
    let _certdb_table = TableGuard::new(
        &tls.url("localhost", "certdb", &format!("sslmode=require&sslcert={}&sslkey={}", tls.file("client.crt"), tls.file("client.key"))),
        &table,
    );
    let scram = |query: &str| tls.url("localhost", "scramdb", query).replacen("postgres@", "tributary:tributary@", 1);
    let _scramdb_table = TableGuard::new(&scram("sslmode=require"), &table);
    let (ca, other_ca) = (tls.file("ca.crt"), tls.file("other-ca.crt"));
    let (client_cert, client_key) = (tls.file("client.crt"), tls.file("client.key"));
    let with_ca = |host: &str, mode: &str, ca: &str| tls.url(host, "postgres", &format!("sslmode={mode}&sslrootcert={ca}"));

    let accepted = [
        ("verify-full at the certificate's name", with_ca("localhost", "verify-full", &ca), vec![]),
        ("verify-ca elsewhere", with_ca("127.0.0.1", "verify-ca", &ca), vec![]),
        ("the flag's CA replacing the URL's", with_ca("localhost", "verify-full", &other_ca), vec!["--database-ca-file", &ca]),
        (
            "a client certificate where one is wanted",
            tls.url("localhost", "certdb", "sslmode=verify-full"),
            vec!["--database-ca-file", &ca, "--database-cert-file", &client_cert, "--database-key-file", &client_key],
        ),
        (
            "a SCRAM password bound to the TLS channel",
            scram(&format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require")),
            vec![],
        ),
    ];
    for (what, url, flags) in &accepted {
        let (code, stderr) = migrate_at(url, &table, flags).await;
        assert_eq!(code, Some(0), "{what}: {stderr}");
    }

    let unknown_issuer = format!("UnknownIssuer (the server's certificate is not signed by the CA certificate(s) in {other_ca})");
    let refused: [(&str, String, Vec<&str>, &str); 5] = [
        (
            "verify-full at a name the certificate does not have",
            with_ca("127.0.0.1", "verify-full", &ca),
            vec![],
            r#"certificate not valid for name "127.0.0.1"; certificate is only valid for DnsName("localhost") (sslmode=verify-full wants the host connected to among the certificate's names"#,
        ),
        ("verify-full with another CA", with_ca("localhost", "verify-full", &other_ca), vec![], &unknown_issuer),
        ("verify-ca with another CA", with_ca("localhost", "verify-ca", &other_ca), vec![], &unknown_issuer),
        ("require with another CA", with_ca("localhost", "require", &other_ca), vec![], &unknown_issuer),
        ("no client certificate", tls.url("localhost", "certdb", "sslmode=require"), vec![], "requires a valid client certificate"),
    ];
    for (what, url, flags, cause) in &refused {
        let (code, stderr) = migrate_at(url, &table, flags).await;
        assert_eq!(code, Some(2), "{what}: exit code (stderr: {stderr})");
        let mode = url.split("sslmode=").nth(1).and_then(|rest| rest.split('&').next()).expect("a mode");
        assert!(stderr.contains(&format!("cannot connect to the database (sslmode={mode})")), "{what}: {stderr}");
        assert!(stderr.contains(cause), "{what}: the message does not name {cause:?}: {stderr}");
    }
}

/// TLS asked of a server without it: the relay refuses, and sends nothing but the TLS request in
/// plain text (no start-up message with the user name, no query); the outbox's rows stay and
/// nothing reaches Kafka. `prefer` goes on in plain text there, as libpq does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_asked_of_a_server_without_tls_sends_nothing_in_plain_text() {
    let test = "tls_asked_of_a_server_without_tls_sends_nothing_in_plain_text";
    let Some(env) = test_env(test, false) else { return };
    let Some(tls) = tls_database(test) else { return };
    let table = table_name("tls_refused");
    let _table = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let db = pg(&env.database_url).await;
    for seq in 0..5 {
        insert(&db, &table, "Order", "Order-0", seq, 0).await;
    }
    let proxy = NoTlsProxy::start(&env.database_url).await;
    let ca = tls.file("ca.crt");

    for mode in ["require", "verify-ca", "verify-full"] {
        let (code, stderr) = migrate_at(&proxy.url(&format!("sslmode={mode}&sslrootcert={ca}")), &table, &[]).await;
        assert_eq!(code, Some(2), "{mode}: exit code (stderr: {stderr})");
        assert!(stderr.contains(&format!("cannot connect to the database (sslmode={mode})")), "{mode}: {stderr}");
        assert!(stderr.contains("server does not support TLS"), "{mode}: {stderr}");
    }

    let topic = topic_name("tls_refused");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
    let refused_env = TestEnv { database_url: proxy.url("sslmode=require"), ..env.clone() };
    let relay = Relay::spawn(&refused_env, &table, &relay_args(&topic));
    let reader = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(relay.log_text().contains("server does not support TLS"), "the log names the cause\n{}", relay.log_tail(25));
    assert_eq!(relay.readyz().await, Some(503), "not ready without its database\n{}", relay.log_tail(25));
    assert_eq!(count_rows(&db, &table).await, 5, "rows stay");
    assert_eq!(reader.len(), 0, "nothing reaches Kafka");
    drop(relay);

    assert!(proxy.refused() >= 4, "the proxy refused the commands and the relay: {}", proxy.refused());
    assert_eq!(proxy.plain_bytes_after_refusal(), 0, "a client that asked for TLS went on in plain text");

    // The proxy passes plain text through: `prefer` gets there (the table exists already).
    let (code, stderr) = migrate_at(&proxy.url("sslmode=prefer"), &table, &[]).await;
    assert_eq!(code, Some(0), "prefer: {stderr}");
    assert!(proxy.plain_bytes_after_refusal() > 0, "prefer went on in plain text");
}

/// The first message of a client that asks for TLS: length 8, request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A PostgreSQL server without TLS in front of the test database: it answers a TLS request with
/// `N` and passes everything else through. It counts the TLS requests it refused and the bytes
/// clients sent after a refusal, which a client that asked for TLS must never send.
struct NoTlsProxy {
    address: SocketAddr,
    /// The upstream URL's user, password and database, as URL text (`user[:password]@…/db`).
    user: String,
    database: String,
    refused: Arc<AtomicUsize>,
    plain_after_refusal: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl NoTlsProxy {
    async fn start(upstream_url: &str) -> Self {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let config: tokio_postgres::Config = upstream_url.parse().expect("the test database URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("the test database is not reached over TCP: {other:?}"),
        };
        let upstream = format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432));
        let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
        let mut user = encode(config.get_user().unwrap_or("postgres"));
        if let Some(password) = config.get_password() {
            user = format!("{user}:{}", encode(std::str::from_utf8(password).expect("a UTF-8 password")));
        }
        let database = encode(config.get_dbname().unwrap_or("postgres"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let (refused, plain_after_refusal) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (refused, plain_after_refusal) = (refused.clone(), plain_after_refusal.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(pass_through(client, upstream.clone(), refused.clone(), plain_after_refusal.clone()));
                }
            })
        };
        NoTlsProxy { address, user, database, refused, plain_after_refusal, task }
    }

    /// The test database's URL through the proxy, with `query`.
    fn url(&self, query: &str) -> String {
        format!("postgres://{}@{}/{}?{query}", self.user, self.address, self.database)
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn plain_bytes_after_refusal(&self) -> usize {
        self.plain_after_refusal.load(Ordering::SeqCst)
    }
}

impl Drop for NoTlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pass_through(mut client: TcpStream, upstream: String, refused: Arc<AtomicUsize>, plain_after_refusal: Arc<AtomicUsize>) {
    let mut first = [0; SSL_REQUEST.len()];
    if client.read_exact(&mut first).await.is_err() {
        return;
    }
    let mut received = first.to_vec();
    if first == SSL_REQUEST {
        refused.fetch_add(1, Ordering::SeqCst);
        if client.write_all(b"N").await.is_err() {
            return;
        }
        let mut buffer = [0; 4096];
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                plain_after_refusal.fetch_add(read, Ordering::SeqCst);
                received = buffer[..read].to_vec();
            }
        }
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
    if server.write_all(&received).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
