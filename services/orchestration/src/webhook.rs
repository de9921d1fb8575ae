//! Signed webhooks, for sends and for alerts: a POST of a JSON body with
//! `Corvus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the
//! endpoint's secret, and `Idempotency-Key` so that a receiver can drop a repeat. A
//! receiver checks the signature and that `t` is recent, which stops a replay of an old
//! request.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "corvus-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The `Corvus-Signature` value of `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// How a webhook call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 2xx: delivered; the body, as a receipt.
    Delivered(String),
    /// Worth trying again: a timeout, a connection failure, 408, 429 or 5xx.
    Retry(String),
    /// Never worth trying again: another 4xx.
    Refused(String),
}

/// A client with the timeout a webhook gets to answer.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .expect("a webhook client")
}

/// POSTs `body`, signed, with `key` as the idempotency key.
pub async fn post(client: &reqwest::Client, url: &str, secret: &str, key: &str, body: Vec<u8>) -> Answer {
    let now = chrono::Utc::now().timestamp();
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, now, &body))
        .header(IDEMPOTENCY_HEADER, key)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Answer::Retry("timed out".to_owned()),
        Err(e) => return Answer::Retry(format!("not reached: {e}")),
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let text: String = text.chars().take(1_000).collect();
    match status.as_u16() {
        200..=299 => Answer::Delivered(text),
        408 | 429 | 500..=599 => Answer::Retry(format!("HTTP {status}: {text}")),
        _ => Answer::Refused(format!("HTTP {status}: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_body() {
        // Python: hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("s3cret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
