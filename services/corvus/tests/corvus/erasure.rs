//! After `ForgetProfile`, nothing of the person can be read back: not from any table
//! of any service, not from any cache key, and on SQLite not from the files either
//! (freed pages and the write-ahead log included), as `grep -a` would find it.

use std::path::Path;

use corvus_proto::identity::v1 as pb;
use corvus_test_support::{Backend, on_both_backends};
use sqlx::{Connection as _, Row as _};

use crate::identity::{by_identifier, event, send};
use crate::support::{TestApp, spawn};

on_both_backends!(nothing_of_an_erased_person_is_left_anywhere);

/// What the person sent, each spelled as identity keeps it.
const ZELDA: [&str; 5] = [
    "zelda.secret@example.com",
    "+447700900555",
    "user-zelda-77",
    "anon-zelda-77",
    "Zelda Quux-Secret",
];
/// Someone who stays: proof that the search reads what is there.
const OTHER: &str = "olga.stays@example.com";

async fn nothing_of_an_erased_person_is_left_anywhere(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let identify = |m: &str, ids: &[(&str, &str)], name: &str| {
        let mut e = event(m, ids);
        e.r#type = corvus_proto::common::v1::EventType::Identify as i32;
        e.traits = Some(corvus_proto::raw::RawStruct::from_json(
            serde_json::json!({ "name": name }).as_object().unwrap(),
        ));
        e
    };
    send(
        &app,
        vec![
            identify(
                "zm-1",
                &[("user_id", ZELDA[2]), ("email", ZELDA[0]), ("anonymous_id", ZELDA[3])],
                ZELDA[4],
            ),
            event("zm-2", &[("user_id", ZELDA[2]), ("phone", ZELDA[1])]),
            identify("om-1", &[("email", OTHER)], "Olga"),
        ],
    )
    .await;
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;
    let mut admin = app.identity(&app.admin_key).await;
    let zelda = by_identifier(&mut admin, "user_id", ZELDA[2])
        .await
        .unwrap()
        .profile
        .unwrap();
    assert_eq!(zelda.event_counts.iter().map(|c| c.count).sum::<u64>(), 2);
    // Every needle is there before: the search would find it.
    for needle in ZELDA.iter().chain([&OTHER]) {
        assert!(
            found(&app, backend, needle).await,
            "{needle} not found before the erasure"
        );
    }

    let receipt = admin
        .forget_profile(pb::ForgetProfileRequest {
            profile_id: zelda.profile_id,
            allow_recreate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    let identity = receipt.stores.iter().find(|s| s.store == "identity").unwrap();
    assert_eq!(identity.removed["log"], 2, "the person's entries in identity's log");
    app.caught_up(&app.admin_key).await;
    app.downstream_caught_up().await;

    for needle in ZELDA {
        assert!(!found(&app, backend, needle).await, "{needle} is still stored");
    }
    assert!(found(&app, backend, OTHER).await);
    app.stop().await;
}

/// Whether `needle` can be read from any store of the app: every row of every table of
/// every schema (Postgres) or the bytes of every file (SQLite), and every cache key with
/// its value (Redis).
async fn found(app: &TestApp, backend: Backend, needle: &str) -> bool {
    let in_database = match backend {
        Backend::Postgres => in_postgres(app, needle).await,
        Backend::Embedded => in_files(&app.config.storage.data_dir, needle),
    };
    in_database || in_redis(app, needle).await
}

async fn in_postgres(app: &TestApp, needle: &str) -> bool {
    use secrecy::ExposeSecret;
    let url = app
        .config
        .storage
        .database_url
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() > 10, "{tables:?}");
    // Text as it is, and inside bytea (protobuf payloads) as Postgres prints it: hex.
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    for (schema, table) in tables {
        let rows = sqlx::query(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        if rows.iter().any(|r| {
            let row: String = r.get(0);
            row.contains(needle) || row.contains(&hex)
        }) {
            eprintln!("{needle} in {schema}.{table}");
            return true;
        }
    }
    false
}

/// Every byte of every file in the data directory, as `grep -a` reads them.
fn in_files(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

async fn in_redis(app: &TestApp, needle: &str) -> bool {
    let Some(url) = app.config.storage.redis_url.as_ref() else {
        return false;
    };
    use secrecy::ExposeSecret;
    let client = redis::Client::open(url.expose_secret()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", app.config.storage.cache_namespace);
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
    let contains = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
        let read = match kind.as_str() {
            "string" => "GET",
            "hash" => "HGETALL",
            "set" => "SMEMBERS",
            "zset" => "ZRANGE",
            "list" => "LRANGE",
            _ => continue,
        };
        let mut command = redis::cmd(read);
        command.arg(&key);
        if matches!(read, "ZRANGE" | "LRANGE") {
            command.arg(0).arg(-1);
        }
        let values: Vec<Vec<u8>> = match read {
            "GET" => vec![
                command
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .unwrap()
                    .unwrap_or_default(),
            ],
            _ => command.query_async(&mut conn).await.unwrap(),
        };
        if contains(&key) || values.iter().any(|v| contains(v)) {
            eprintln!("{needle} in redis key {}", String::from_utf8_lossy(&key));
            return true;
        }
    }
    false
}
