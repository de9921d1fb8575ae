//! The cache conformance suite (Redis and in-process alike) and Redis reconnection.

use std::sync::Arc;
use std::time::Duration;

use corvus_storage::{Cache, RedisCache, Versioned};
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
