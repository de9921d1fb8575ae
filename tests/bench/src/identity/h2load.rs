//! GetProfile driven by h2load (nghttp2's HTTP/2 load generator), in a process of its
//! own: the server's capacity with a lean client beside it on the same cores, as a user
//! of the API would load it. Optional: the points are left out, with a note, when h2load
//! is not on the PATH (Debian's `nghttp2-client`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::{BufMut as _, Bytes};

use crate::load::Measured;

/// Tells whether h2load can be run here.
pub(super) async fn available() -> bool {
    tokio::process::Command::new("h2load")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|out| out.status.success())
}

/// Runs h2load for `secs` with `connections` × `streams` requests in flight, each sending
/// the message `request` to `path`; what it measured (latencies from its per-request log)
/// and the bytes of the answers' bodies.
pub(super) async fn run(
    url: &str,
    path: &str,
    key: &str,
    request: &Bytes,
    (connections, streams): (usize, usize),
    secs: f64,
) -> anyhow::Result<(Measured, u64)> {
    let files = Files::new();
    // The gRPC frame: not compressed, the message's length, the message.
    let mut body = Vec::with_capacity(5 + request.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(request.len())?);
    body.extend_from_slice(request);
    std::fs::write(&files.body, body)?;
    let out = tokio::process::Command::new("h2load")
        .args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-D", &format!("{}", secs.ceil().max(1.0) as u64)])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {key}")])
        .arg(format!("--data={}", files.body.display()))
        .arg(format!("--log-file={}", files.log.display()))
        .arg(format!("{}{path}", url.trim_end_matches('/')))
        .output()
        .await
        .context("running h2load")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "h2load failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = Summary::parse(&stdout)?;
    ensure!(
        summary.failed == 0,
        "h2load: {} of its requests failed:\n{stdout}",
        summary.failed
    );
    let mut measured = Measured {
        elapsed: summary.elapsed,
        ..Measured::default()
    };
    for line in std::fs::read_to_string(&files.log)?.lines() {
        let mut columns = line.split('\t');
        let (Some(_start), Some(status), Some(micros)) = (columns.next(), columns.next(), columns.next()) else {
            bail!("h2load's log has a line of an unknown shape: {line:?}");
        };
        ensure!(
            status == "200",
            "h2load: a request was answered with HTTP status {status}"
        );
        measured.latencies.push(Duration::from_micros(micros.parse()?));
    }
    measured.events = measured.latencies.len() as u64;
    ensure!(measured.events > 0, "h2load made no request:\n{stdout}");
    Ok((measured, summary.data))
}

/// The two files h2load is given, removed when dropped.
struct Files {
    body: PathBuf,
    log: PathBuf,
}

impl Files {
    fn new() -> Self {
        let stem = std::env::temp_dir().join(format!("corvus-bench-h2load-{}", std::process::id()));
        Self {
            body: stem.with_extension("body"),
            log: stem.with_extension("log"),
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.body);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What h2load's summary says: how long it ran, how many requests failed, and the bytes
/// of the answers' bodies (HTTP/2 DATA).
#[derive(Debug, PartialEq)]
struct Summary {
    elapsed: Duration,
    failed: u64,
    data: u64,
}

impl Summary {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .with_context(|| format!("h2load printed no {start:?} line:\n{text}"))
        };
        // "finished in 5.00s, 20556.40 req/s, 27.35MB/s"
        let finished = line("finished in ")?["finished in ".len()..]
            .split(',')
            .next()
            .unwrap_or_default();
        let elapsed = match finished.strip_suffix("ms") {
            Some(ms) => Duration::from_secs_f64(ms.parse::<f64>()? / 1e3),
            None => Duration::from_secs_f64(finished.trim_end_matches('s').parse()?),
        };
        // "requests: 102782 total, 102846 started, 102782 done, 102782 succeeded, 0 failed, ..."
        let counts: BTreeMap<&str, u64> = line("requests: ")?["requests: ".len()..]
            .split(", ")
            .filter_map(|part| {
                let (n, what) = part.split_once(' ')?;
                Some((what, n.parse().ok()?))
            })
            .collect();
        let failed = counts.get("failed").copied().unwrap_or(0) + counts.get("errored").copied().unwrap_or(0);
        // "traffic: 138.44MB (145164350) total, 1.20MB (1258414) headers (space savings
        // 95.71%), 136.26MB (142878632) data"
        let data = line("traffic: ")?
            .split(", ")
            .find(|part| part.ends_with(" data"))
            .and_then(|part| part.split_once('(')?.1.split_once(')')?.0.parse().ok())
            .context("h2load's traffic line has no data figure")?;
        Ok(Self { elapsed, failed, data })
    }
}
