//! The real Segment and RudderStack Python SDKs, unchanged, pointed at Corvus: every
//! event they send is stored. Needs `pip install -r tests/sdk/requirements.txt`; on a
//! laptop without the SDKs the test is skipped with a notice, under CI it fails.

use std::collections::HashSet;
use std::path::PathBuf;

use corvus_test_support::Backend;
use serde_json::Value;

use crate::support::{message_ids, spawn};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/send_events.py")
}

fn sdks_installed() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import segment.analytics, rudderstack.analytics"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the Segment and RudderStack SDKs must be installed under CI (tests/sdk/requirements.txt)");
        }
        eprintln!("notice: the Segment/RudderStack Python SDKs are not installed; skipping the SDK test");
    }
    ok
}

async fn send(http: &str, key: &str, sdk: &str, count: u32, gzip: bool) -> Vec<String> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script()).args([
        "--host",
        http,
        "--write-key",
        key,
        "--sdk",
        sdk,
        "--count",
        &count.to_string(),
    ]);
    if gzip {
        cmd.arg("--gzip");
    }
    let out = cmd.output().await.expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{sdk} reported errors: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line");
    assert_eq!(report["errors"], Value::Array(Vec::new()));
    report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_and_rudderstack_sdks_get_every_event_stored() {
    if !sdks_installed() {
        return;
    }
    for backend in [Backend::Embedded, Backend::Postgres] {
        let Some(app) = spawn(backend).await else {
            return;
        };
        let mut sent = Vec::new();
        sent.extend(send(&app.http, &app.ingest_key, "segment", 240, false).await);
        sent.extend(send(&app.http, &app.ingest_key, "segment", 60, true).await);
        sent.extend(send(&app.http, &app.ingest_key, "rudder", 240, true).await);
        sent.extend(send(&app.http, &app.ingest_key, "rudder", 60, false).await);
        assert_eq!(sent.len(), 600);
        let stored = message_ids(&app.stored(&app.read_key).await);
        assert_eq!(stored.len(), sent.len(), "stored once each");
        let stored: HashSet<_> = stored.into_iter().collect();
        let sent: HashSet<_> = sent.into_iter().collect();
        assert_eq!(stored, sent);
        app.stop().await;
    }
}
