//! Alerts to their rules' webhooks, by a task of their own: the log consumer only marks
//! an alert pending. Each pending alert is leased from the store (so one replica sends
//! it), POSTed signed with the alert id as the idempotency key, and tried again with
//! exponential backoff on a timeout or a 5xx, each in its own task: an endpoint that
//! hangs or fails holds up only its own alerts. After the last attempt, or a refusal,
//! the alert records the failure.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::service::Orchestration;
use crate::storage::{Alert, WebhookAttempt, WebhookState};
use crate::webhook::{self, Answer};

/// How alert webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How long an endpoint gets to answer.
    pub timeout: Duration,
    /// The wait before the second attempt; each further one waits twice as long (at
    /// most ten minutes).
    pub backoff: Duration,
    /// Attempts before an alert's webhook is given up, the first included.
    pub max_attempts: u32,
    /// How often the store is looked at for alerts raised on other replicas, or due
    /// again after a restart.
    pub poll: Duration,
    /// Alerts sent at once, at most.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_attempts: 6,
            poll: Duration::from_secs(1),
            concurrency: 64,
        }
    }
}

/// Beyond an attempt's timeout, how long a lease lasts: a replica that stops
/// mid-attempt leaves the alert to another after this.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl WebhookSettings {
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.timeout + LEASE_MARGIN).unwrap_or(chrono::Duration::minutes(1))
    }

    /// The wait after the `attempts`-th failed attempt.
    fn backoff_after(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// What a webhook receives.
pub fn payload(alert: &Alert) -> serde_json::Value {
    json!({
        "alert_id": alert.id.to_string(),
        "sequence": alert.sequence,
        "workspace_id": alert.workspace.as_str(),
        "rule": alert.rule,
        "kind": alert.kind.as_str(),
        "profile_id": alert.profile.to_string(),
        "reason": alert.reason,
        "event_id": alert.event_id,
        "raised_at": alert.raised_at.to_rfc3339(),
        "profile": alert.summary,
    })
}

impl Orchestration {
    /// The task that sends alerts to their webhooks, until `stop`.
    pub fn spawn_alert_webhooks(&self, stop: CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        set.spawn(self.clone().alert_webhooks(stop));
        set
    }

    async fn alert_webhooks(self, stop: CancellationToken) {
        let settings = self.alerting.settings.clone();
        let client = webhook::client(settings.timeout);
        let mut sending = JoinSet::new();
        loop {
            while sending.try_join_next().is_some() {}
            let room = settings.concurrency.saturating_sub(sending.len());
            if room > 0 {
                let now = Utc::now();
                match self
                    .store
                    .claim_webhooks(now, now + settings.lease(), room as u32)
                    .await
                {
                    Ok(claimed) => {
                        for alert in claimed {
                            sending.spawn(self.clone().send_alert(client.clone(), alert, stop.clone()));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "alert webhooks could not be claimed"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.alerting.due.notified() => {}
                _ = tokio::time::sleep(settings.poll) => {}
            }
        }
        // Leased alerts left unsent go to whichever replica looks after the lease.
        sending.shutdown().await;
    }

    /// Sends one alert until it is delivered, refused or out of attempts.
    async fn send_alert(self, client: reqwest::Client, alert: Alert, stop: CancellationToken) {
        let settings = self.alerting.settings.clone();
        let mut attempts = alert.webhook_attempts;
        let record = |attempt: WebhookAttempt| {
            let store = Arc::clone(&self.store);
            let (ws, sequence) = (alert.workspace.clone(), alert.sequence);
            async move {
                if let Err(error) = store.webhook_attempted(&ws, sequence, &attempt).await {
                    tracing::warn!(workspace = %ws, sequence, %error, "an alert webhook's attempt was not recorded");
                }
            }
        };
        let body = serde_json::to_vec(&payload(&alert)).expect("an alert serialises");
        let key = alert.id.to_string();
        loop {
            let hook = match self.rules_of(&alert.workspace).await {
                Ok(rules) => rules
                    .rules
                    .iter()
                    .find(|r| r.rule.name == alert.rule)
                    .and_then(|r| r.rule.webhook.clone()),
                // The lease runs out and a later look tries again.
                Err(error) => {
                    tracing::warn!(workspace = %alert.workspace, %error, "an alert's rule could not be read");
                    return;
                }
            };
            let Some(hook) = hook else {
                record(WebhookAttempt {
                    state: WebhookState::Failed,
                    attempts,
                    error: "the rule, or its webhook, was deleted".to_owned(),
                    next_at: None,
                })
                .await;
                return;
            };
            attempts += 1;
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                answer = webhook::post(&client, &hook.url, &hook.secret, &key, body.clone()) => answer,
            };
            let (attempt, wait) = match answer {
                Answer::Delivered(_) => (
                    WebhookAttempt {
                        state: WebhookState::Delivered,
                        attempts,
                        error: String::new(),
                        next_at: None,
                    },
                    None,
                ),
                Answer::Retry(error) if attempts < settings.max_attempts => {
                    let wait = settings.backoff_after(attempts);
                    let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default() + settings.lease();
                    (
                        WebhookAttempt {
                            state: WebhookState::Pending,
                            attempts,
                            error,
                            next_at: Some(next),
                        },
                        Some(wait),
                    )
                }
                Answer::Retry(error) | Answer::Refused(error) => (
                    WebhookAttempt {
                        state: WebhookState::Failed,
                        attempts,
                        error,
                        next_at: None,
                    },
                    None,
                ),
            };
            let outcome = attempt.state.as_str();
            metrics::counter!("corvus_orchestration_alert_webhooks_total", "outcome" => outcome).increment(1);
            if attempt.state == WebhookState::Failed {
                tracing::warn!(
                    workspace = %alert.workspace,
                    alert = %alert.id,
                    attempts,
                    error = %attempt.error,
                    "an alert webhook was given up"
                );
            }
            record(attempt).await;
            let Some(wait) = wait else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let s = WebhookSettings::default();
        let waits: Vec<u64> = (1..=5).map(|a| s.backoff_after(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(s.backoff_after(40), MAX_BACKOFF);
    }
}
