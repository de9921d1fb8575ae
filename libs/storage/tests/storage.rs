//! The cache conformance suite (Redis and in-process alike), Redis reconnection, and the
//! settings of a Postgres session.

use std::sync::Arc;
use std::time::Duration;

use corvus_storage::{Cache, Database, RedisCache, Versioned};
use corvus_test_support::{Backend, FlakyProxy, TempDir, on_both_backends};

on_both_backends!(values_expire_and_counters_add_up, versioned_values_only_move_forward);

async fn cache(backend: Backend, dir: &TempDir) -> Option<Arc<dyn Cache>> {
    let config = corvus_test_support::storage(backend, dir).await?;
    Some(<dyn Cache>::connect(&config).await.expect("connect the cache"))
}

async fn values_expire_and_counters_add_up(backend: Backend) {
    let dir = TempDir::new();
    let Some(cache) = cache(backend, &dir).await else {
        return;
    };
    cache.ping().await.unwrap();
    assert_eq!(cache.get("missing").await.unwrap(), None);
    cache.set("profile:1", b"v1", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get("profile:1").await.unwrap().as_deref(), Some(&b"v1"[..]));
    cache.set("profile:1", b"v2", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get("profile:1").await.unwrap().as_deref(), Some(&b"v2"[..]));
    cache.delete("profile:1").await.unwrap();
    assert_eq!(cache.get("profile:1").await.unwrap(), None);

    cache.set("short", b"x", Duration::from_millis(50)).await.unwrap();
    assert_eq!(cache.incr("count", 3, Duration::from_millis(300)).await.unwrap(), 3);
    assert_eq!(cache.incr("count", 4, Duration::from_secs(60)).await.unwrap(), 7);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get("short").await.unwrap(), None, "expired");
    // The window ended with the first increment's expiry, not the later one's.
    assert_eq!(cache.incr("count", 1, Duration::from_secs(60)).await.unwrap(), 1);
}

async fn versioned_values_only_move_forward(backend: Backend) {
    let dir = TempDir::new();
    let Some(cache) = cache(backend, &dir).await else {
        return;
    };
    let ttl = Duration::from_secs(60);
    let set = |key, version, value| Versioned { key, version, value };
    assert_eq!(cache.get_versioned("p").await.unwrap(), None);
    cache
        .set_versioned(&[set("p", 5, b"five"), set("q", 1, b"")], ttl)
        .await
        .unwrap();
    // Older and equal versions lose; a newer one wins. Versions of 10 digits and more
    // compare as numbers, not as text.
    cache
        .set_versioned(&[set("p", 4, b"four"), set("p", 5, b"again")], ttl)
        .await
        .unwrap();
    assert_eq!(cache.get_versioned("p").await.unwrap(), Some((5, b"five".to_vec())));
    cache
        .set_versioned(&[set("p", 10_000_000_000, b"big")], ttl)
        .await
        .unwrap();
    cache
        .set_versioned(&[set("p", 9_999_999_999, b"smaller")], ttl)
        .await
        .unwrap();
    assert_eq!(
        cache.get_versioned("p").await.unwrap(),
        Some((10_000_000_000, b"big".to_vec()))
    );
    assert_eq!(cache.get_versioned("q").await.unwrap(), Some((1, Vec::new())));
    cache.set_versioned(&[], ttl).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reconnects_after_losing_its_connection() {
    let Some(url) = corvus_test_support::redis_url() else {
        return;
    };
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = FlakyProxy::start(target).await;
    let url: secrecy::SecretString = format!("redis://{}", proxy.addr()).into();
    let cache = RedisCache::connect(&url, &format!("test-{}", std::process::id()))
        .await
        .unwrap();
    cache.set("k", b"v", Duration::from_secs(60)).await.unwrap();

    proxy.cut();
    assert!(cache.ping().await.is_err(), "the cut was noticed");
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.ping().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// A process's near cache follows changes made elsewhere, and after losing Redis it never
/// serves what it held from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_follows_other_writers_and_forgets_when_cut_off() {
    let Some(url) = corvus_test_support::redis_url() else {
        return;
    };
    let namespace = format!("test-near-{}", std::process::id());
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = FlakyProxy::start(target).await;
    let proxied: secrecy::SecretString = format!("redis://{}", proxy.addr()).into();
    let reader = RedisCache::connect(&proxied, &namespace)
        .await
        .unwrap()
        .with_near_cache(&proxied, 100)
        .await
        .unwrap();
    let writer = RedisCache::connect(&url.clone().into(), &namespace).await.unwrap();
    let ttl = Duration::from_secs(60);
    let writer = &writer;
    let put = |version, value: &'static [u8]| async move {
        writer
            .set_versioned(
                &[Versioned {
                    key: "p",
                    version,
                    value,
                }],
                ttl,
            )
            .await
            .unwrap();
    };
    let reads = |expected: u64| {
        let reader = &reader;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match reader.get_versioned("p").await {
                    Ok(Some((version, _))) if version == expected => return,
                    Ok(Some((version, _))) => assert!(version < expected, "read {version}, ahead of {expected}"),
                    _ => {}
                }
                assert!(tokio::time::Instant::now() < deadline, "never read version {expected}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    put(1, b"one").await;
    reads(1).await;
    let hits = reader.near_hits().unwrap();
    for _ in 0..10 {
        reader.get_versioned("p").await.unwrap();
    }
    assert_eq!(reader.near_hits().unwrap(), hits + 10, "answered here, not by Redis");
    // Cached here now; another process's change still reaches this one.
    put(2, b"two").await;
    reads(2).await;
    // Its own change is read back at once.
    reader
        .set_versioned(
            &[Versioned {
                key: "p",
                version: 3,
                value: b"three",
            }],
            ttl,
        )
        .await
        .unwrap();
    assert_eq!(reader.get_versioned("p").await.unwrap().map(|v| v.0), Some(3));

    // Cut off while another process writes: the copy from before the cut is dropped.
    proxy.cut();
    put(4, b"four").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !matches!(reader.get_versioned("p").await, Ok(Some((3, _)))),
        "served its copy from before the cut"
    );
    proxy.restore();
    reads(4).await;
}

/// Every session runs without JIT and on its service's schema, with the settings the
/// service asks for.
#[tokio::test]
async fn postgres_sessions_carry_their_settings() {
    let dir = TempDir::new();
    let Some(config) = corvus_test_support::storage(Backend::Postgres, &dir).await else {
        return;
    };
    let Database::Postgres(pool) =
        Database::connect_lazy(&config, "billing", &[("enable_seqscan", "off")]).expect("pool")
    else {
        panic!("a database url gives a Postgres pool");
    };
    for (setting, expected) in [("jit", "off"), ("search_path", "billing"), ("enable_seqscan", "off")] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(value, expected, "{setting}");
    }
}

/// A table is analyzed once the rows written reach the first mark, and again only at
/// twice the count: the planner's estimate of its size (`reltuples`, -1 before any
/// `ANALYZE`) follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_analyzed_as_they_grow() {
    let dir = TempDir::new();
    let Some(config) = corvus_test_support::storage(Backend::Postgres, &dir).await else {
        return;
    };
    let Database::Postgres(pool) = Database::connect_lazy(&config, "growing", &[]).expect("pool") else {
        panic!("a database url gives a Postgres pool");
    };
    sqlx::query("CREATE SCHEMA IF NOT EXISTS growing")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE growing.rows (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let estimate = || async {
        let n: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'growing.rows'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    // What the estimate becomes once a background ANALYZE, if one was started, ended.
    let settled = |expected: f32| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        tokio::time::sleep(Duration::from_millis(300)).await;
        while estimate().await != expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        estimate().await
    };
    let stats = corvus_storage::Statistics::new("test", 100, "ANALYZE growing.rows");
    let grow = |to: i32, by: usize| {
        let (pool, stats) = (pool.clone(), stats.clone());
        async move {
            sqlx::query("INSERT INTO growing.rows SELECT generate_series($1, $2)")
                .bind(to - by as i32)
                .bind(to - 1)
                .execute(&pool)
                .await
                .unwrap();
            stats.wrote(&pool, by);
        }
    };
    grow(99, 99).await;
    assert_eq!(settled(-1.0).await, -1.0, "not before the first mark");
    grow(100, 1).await;
    assert_eq!(settled(100.0).await, 100.0, "at the first mark");
    grow(199, 99).await;
    assert_eq!(settled(100.0).await, 100.0, "not again before twice the count");
    grow(200, 1).await;
    assert_eq!(settled(200.0).await, 200.0, "again at twice the count");
}
