//! Synthetic but realistic events: a track/identify/page mix with properties, traits,
//! a campaign and the context an analytics.js-like SDK sends.
//!
//! Every event is first written as a Segment JSON message and then turned into a
//! `corvus.common.v1.Event` by the service's own converter, so the gRPC and HTTP runs
//! carry the same events and the proto form is exactly what the HTTP path would store.
//! Events are a pure function of (seed, index), so nothing has to be kept in memory but
//! the encoded batches.

use bytes::Bytes;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use corvus_proto::common::v1::Event;
use corvus_proto::ingestion::v1::IngestRequest;
use prost::Message;
use serde_json::{Value, json};

/// A pre-encoded request: an `IngestRequest` (gRPC) or a `/v1/batch` body (HTTP).
#[derive(Debug, Clone)]
pub struct Batch {
    pub body: Bytes,
    pub events: u32,
}

impl Batch {
    /// An encoded `IngestRequest` of `events`, sent at `sent_at`.
    pub fn grpc(events: Vec<Event>, sent_at: DateTime<Utc>) -> Batch {
        let count = events.len() as u32;
        let request = IngestRequest {
            events,
            sent_at: Some(corvus_ingestion::domain::validate::to_timestamp(sent_at)),
        };
        Batch {
            body: request.encode_to_vec().into(),
            events: count,
        }
    }
}

/// splitmix64: tiny, fast, and good enough to vary synthetic fields.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, index: u64) -> Self {
        let mut rng = Self(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A UUID-shaped string; `tail` (48 bits) makes it unique where it must be.
    pub fn uuid(&mut self, tail: u64) -> String {
        let a = self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (self.next() & 0x3fff),
            tail & 0xffff_ffff_ffff
        )
    }
}

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
];
const LOCALES: &[(&str, &str)] = &[
    ("en-GB", "Europe/London"),
    ("de-DE", "Europe/Berlin"),
    ("fr-FR", "Europe/Paris"),
    ("en-US", "America/New_York"),
];
const CAMPAIGNS: &[(&str, &str, &str)] = &[
    ("spring_sale", "newsletter", "email"),
    ("brand_search", "google", "cpc"),
    ("retarget_q2", "facebook", "social"),
    ("loyalty_push", "app", "push"),
];
const CHANNELS: &[&str] = &["web", "web", "web", "app", "email"];
const PAGES: &[(&str, &str)] = &[
    ("Home", "/"),
    ("Pricing", "/pricing"),
    ("Checkout", "/checkout"),
    ("Product Detail", "/p/trail-runner-2"),
];
const TRACKS: &[&str] = &["Order Completed", "Product Viewed", "Product Added", "Signed Up"];

/// Event `index` of the corpus `seed`, as a Segment JSON message.
pub fn segment_message(seed: u64, index: u64, now: DateTime<Utc>) -> Value {
    let mut r = Rng::new(seed, index);
    let visitor = r.below(50_000);
    let anonymous_id = Rng::new(seed, visitor).uuid(visitor);
    let user_id = r.chance(60).then(|| format!("user_{visitor:06}"));
    let (locale, timezone) = *r.pick(LOCALES);
    let (name, source, medium) = *r.pick(CAMPAIGNS);
    let (page_name, path) = *r.pick(PAGES);
    let timestamp = now - Duration::milliseconds(r.below(60_000) as i64);
    let context = json!({
        "channel": r.pick(CHANNELS),
        "campaign": {"name": name, "source": source, "medium": medium},
        "locale": locale,
        "timezone": timezone,
        "userAgent": r.pick(USER_AGENTS),
        "ip": format!("203.0.{}.{}", r.below(256), r.below(256)),
        "library": {"name": "analytics.js", "version": "5.2.1"},
        "page": {"path": path, "referrer": "https://www.google.com/"},
    });
    let mut message = json!({
        "messageId": r.uuid(index),
        "anonymousId": anonymous_id,
        "userId": user_id,
        "context": context,
        "timestamp": timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    let fields = message.as_object_mut().expect("an object");
    match r.below(10) {
        // 60 % track, 20 % identify, 20 % page: a typical storefront mix.
        0..=5 => {
            let event = *r.pick(TRACKS);
            fields.insert("type".into(), "track".into());
            fields.insert("event".into(), event.into());
            fields.insert(
                "properties".into(),
                json!({
                    "order_id": format!("ord_{:08}", r.below(100_000_000)),
                    "product_id": format!("sku-{}", r.below(1000)),
                    "revenue": (r.below(50_000) as f64) / 100.0,
                    "currency": "EUR",
                    "quantity": 1 + r.below(4),
                    "in_stock": r.chance(80),
                }),
            );
        }
        6 | 7 => {
            fields.insert("type".into(), "identify".into());
            fields.insert(
                "traits".into(),
                json!({
                    "email": format!("customer{visitor}@example.com"),
                    "first_name": "Ada",
                    "plan": *r.pick(&["free", "plus", "pro"]),
                    "marketing_opt_in": r.chance(40),
                }),
            );
        }
        _ => {
            fields.insert("type".into(), "page".into());
            fields.insert("name".into(), page_name.into());
            fields.insert(
                "properties".into(),
                json!({
                    "path": path,
                    "url": format!("https://shop.example.com{path}"),
                    "title": format!("{page_name} | Example Shop"),
                }),
            );
        }
    }
    message
}

/// Event `index` of the corpus `seed` as the gRPC API takes it.
pub fn event(seed: u64, index: u64, now: DateTime<Utc>) -> anyhow::Result<Event> {
    corvus_ingestion::domain::segment::from_json(segment_message(seed, index, now), None)
        .map_err(|v| anyhow::anyhow!("generated event {index} is invalid: {v:?}"))
}

/// `total` events of corpus `seed` as encoded `IngestRequest`s of `size` events.
pub fn grpc_batches(seed: u64, total: usize, size: usize) -> anyhow::Result<Vec<Batch>> {
    let now = Utc::now();
    let mut batches = Vec::with_capacity(total.div_ceil(size));
    for start in (0..total).step_by(size) {
        let end = (start + size).min(total);
        let events = (start..end)
            .map(|i| event(seed, i as u64, now))
            .collect::<anyhow::Result<Vec<_>>>()?;
        batches.push(Batch::grpc(events, now));
    }
    Ok(batches)
}

/// `total` events of corpus `seed` as `/v1/batch` JSON bodies of `size` messages.
pub fn http_bodies(seed: u64, total: usize, size: usize) -> anyhow::Result<Vec<Batch>> {
    let now = Utc::now();
    let sent_at = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut batches = Vec::with_capacity(total.div_ceil(size));
    for start in (0..total).step_by(size) {
        let end = (start + size).min(total);
        let messages: Vec<Value> = (start..end).map(|i| segment_message(seed, i as u64, now)).collect();
        let body = serde_json::to_vec(&json!({"batch": messages, "sentAt": sent_at}))?;
        batches.push(Batch {
            body: body.into(),
            events: (end - start) as u32,
        });
    }
    Ok(batches)
}

/// Mean encoded size of one event, proto and JSON, over a sample of the corpus.
pub fn mean_sizes(seed: u64) -> anyhow::Result<(usize, usize)> {
    let now = Utc::now();
    let (mut proto, mut json) = (0, 0);
    const SAMPLE: usize = 1000;
    for i in 0..SAMPLE as u64 {
        proto += event(seed, i, now)?.encoded_len();
        json += serde_json::to_vec(&segment_message(seed, i, now))?.len();
    }
    Ok((proto / SAMPLE, json / SAMPLE))
}
