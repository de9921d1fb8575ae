//! Delivery: each decision that sends waits in `sends` until its time, then goes out
//! through its channel's connector (a signed webhook, or the log), each workspace and
//! channel a queue of its own with its own rate, retries with exponential backoff and
//! dead letters, so that a slow provider holds up only its own queue. Each send's end
//! (`Message Sent`, `Delivery Failed`) goes back into Corvus as an event carrying the
//! decision id, through ingestion, so scoring and measurement see it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::WorkspaceId;
use corvus_proto::common::v1::{Event, EventType, Identifier};
use corvus_proto::orchestration::v1 as pb;
use futures::StreamExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::grpc::timestamp;
use crate::people::{Caller, channel_name, channel_of};
use crate::service::Orchestration;
use crate::storage::{ConnectorDef, ConnectorKind, SendRow, SendState, Settle};
use crate::webhook::{self, Answer};

/// Where the sends' outcomes go back in: ingestion, in this process or over gRPC.
#[async_trait]
pub trait Receipts: Send + Sync {
    async fn ingest(&self, caller: &Caller, events: Vec<Event>) -> Result<(), String>;
}

/// How often the queues are looked at for sends come due.
const POLL: Duration = Duration::from_millis(200);
/// Sends a queue takes at a time; each is leased for `LEASE` beyond its timeout.
const BATCH: u32 = 32;
const LEASE: Duration = Duration::from_secs(60);
/// Sends of one queue in flight at once.
const IN_FLIGHT: usize = 8;

/// The wait before attempt `n + 1` (n ≥ 1 attempts made): 1 s doubling, at most 10 min.
pub fn backoff(attempts: u32) -> chrono::Duration {
    let seconds = 1i64 << attempts.saturating_sub(1).min(10);
    chrono::Duration::seconds(seconds.min(600))
}

impl Orchestration {
    /// The delivery workers: a supervisor that starts a worker for each queue with a send
    /// due, and the reporter that hands sends' outcomes back in as events.
    pub fn spawn_delivery(&self, stop: CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        let running: Arc<Mutex<HashSet<(WorkspaceId, String)>>> = Arc::default();
        let this = self.clone();
        let stopping = stop.clone();
        set.spawn(async move {
            let mut queues = JoinSet::new();
            loop {
                match this.store.due_queues(Utc::now()).await {
                    Ok(due) => {
                        for queue in due {
                            if running.lock().expect("queues").insert(queue.clone()) {
                                let (this, running, stop) = (this.clone(), running.clone(), stopping.clone());
                                queues.spawn(async move {
                                    this.drain(&queue.0, &queue.1, &stop).await;
                                    running.lock().expect("queues").remove(&queue);
                                });
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "delivery: cannot read the queues"),
                }
                while queues.try_join_next().is_some() {}
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            while queues.join_next().await.is_some() {}
        });
        let this = self.clone();
        set.spawn(async move {
            loop {
                if let Err(e) = this.report().await {
                    tracing::warn!(error = %e, "delivery: cannot report sends");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        set
    }

    /// The connector a queue's sends go through.
    async fn connector(&self, ws: &WorkspaceId, channel: &str) -> Result<Option<ConnectorDef>, String> {
        let set = self.store.connectors(ws).await.map_err(|e| e.to_string())?;
        Ok(set
            .into_iter()
            .find(|c| c.channel == channel)
            .or_else(|| (self.config().default_connector == "log").then(|| ConnectorDef::log(channel))))
    }

    /// Sends a queue's due sends until none is left (or the process stops).
    async fn drain(&self, ws: &WorkspaceId, channel: &str, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            let connector = match self.connector(ws, channel).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    tracing::warn!(workspace = %ws, channel, "delivery: no connector for the channel; sends wait");
                    // Pushed back, not dropped: they go once a connector is set.
                    self.defer(ws, channel, "no connector for the channel").await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery: cannot read the connector");
                    return;
                }
            };
            let timeout = Duration::from_millis(connector.timeout_ms);
            let now = Utc::now();
            let lease = now + chrono::Duration::from_std(LEASE + timeout).expect("a short lease");
            let batch = match self.store.claim(ws, channel, now, lease, BATCH).await {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery: cannot take sends");
                    return;
                }
            };
            let client = webhook::client(timeout);
            let gap = Duration::from_secs_f64(1.0 / connector.rate_per_second.max(0.001));
            let mut pace = tokio::time::interval(gap);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut paced = Vec::with_capacity(batch.len());
            for send in batch {
                pace.tick().await;
                paced.push(send);
            }
            // The rate holds across batches through `pace`; within one, IN_FLIGHT at once.
            futures::stream::iter(paced)
                .map(|send| {
                    let (client, connector) = (&client, &connector);
                    async move {
                        let answer = attempt(client, connector, &send).await;
                        let settle = match answer {
                            Answer::Delivered(receipt) => Settle::Sent {
                                receipt,
                                at: Utc::now(),
                            },
                            Answer::Refused(error) => Settle::Dead { error },
                            Answer::Retry(error) if send.attempts + 1 >= connector.max_attempts => Settle::Dead {
                                error: format!("{error} (after {} attempts)", send.attempts + 1),
                            },
                            Answer::Retry(error) => Settle::Retry {
                                error,
                                next: Utc::now() + backoff(send.attempts + 1),
                            },
                        };
                        metrics::counter!("corvus_orchestration_send_attempts_total",
                            "outcome" => match &settle { Settle::Sent { .. } => "sent", Settle::Retry { .. } => "retry", Settle::Dead { .. } => "dead" })
                        .increment(1);
                        (send.decision_id, settle)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                // Recorded as they end, those that ended together in one transaction.
                .ready_chunks(BATCH as usize)
                .for_each(|settled| async move {
                    if let Err(e) = self.store.settle(&settled).await {
                        // The leases run out and the sends are tried again; the
                        // idempotency key lets the provider drop the repeats.
                        tracing::warn!(error = %e, sends = settled.len(), "delivery: cannot record sends");
                    }
                })
                .await;
        }
    }

    /// Pushes a queue's due sends back by a minute, with why.
    async fn defer(&self, ws: &WorkspaceId, channel: &str, why: &str) {
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(1);
        if let Ok(batch) = self.store.claim(ws, channel, now, lease, 1_000).await {
            let retry = Settle::Retry {
                error: why.to_owned(),
                next: now + chrono::Duration::minutes(1),
            };
            let settled: Vec<_> = batch.iter().map(|send| (send.decision_id, retry.clone())).collect();
            let _ = self.store.settle(&settled).await;
        }
    }

    /// Hands the outcomes of ended sends back in as events.
    async fn report(&self) -> Result<(), String> {
        let Some(receipts) = &self.receipts else {
            return Ok(());
        };
        let ended = self.store.unreported(500).await.map_err(|e| e.to_string())?;
        let mut by_workspace: std::collections::BTreeMap<&WorkspaceId, Vec<&SendRow>> = Default::default();
        for send in &ended {
            by_workspace.entry(&send.workspace).or_default().push(send);
        }
        for (ws, sends) in by_workspace {
            let events = sends.iter().map(|s| receipt_event(s)).collect();
            receipts.ingest(&self.service_caller(ws), events).await?;
            let ids: Vec<_> = sends.iter().map(|s| s.decision_id).collect();
            self.store.mark_reported(&ids).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

async fn attempt(client: &reqwest::Client, connector: &ConnectorDef, send: &SendRow) -> Answer {
    match &connector.kind {
        ConnectorKind::Log => {
            tracing::info!(target: "corvus::sends", decision = %send.decision_id, channel = %send.channel,
                to = %send.recipient, payload = %send.payload, "send");
            Answer::Delivered("logged".to_owned())
        }
        ConnectorKind::Webhook { url, secret } => {
            webhook::post(
                client,
                url,
                secret,
                &send.decision_id.to_string(),
                send.payload.clone().into_bytes(),
            )
            .await
        }
    }
}

/// `Message Sent` or `Delivery Failed`, by the person's address (or their profile's
/// strongest identifier), carrying the decision id; its message id is the decision's,
/// so a repeat is a duplicate ingestion drops.
fn receipt_event(send: &SendRow) -> Event {
    let sent = send.state == SendState::Sent;
    let mut properties = serde_json::json!({
        "decision_id": send.decision_id.to_string(),
        "campaign": send.campaign,
        "channel": send.channel,
        "attempts": send.attempts,
    });
    let extra = match sent {
        true => ("receipt", &send.receipt),
        false => ("error", &send.last_error),
    };
    properties[extra.0] = serde_json::Value::String(extra.1.clone());
    let (kind, value) = send.recipient.split_once(':').unwrap_or(("", ""));
    let at = send.sent_at.unwrap_or_else(Utc::now);
    Event {
        message_id: format!("send-{}-{}", send.decision_id, if sent { "sent" } else { "failed" }),
        r#type: EventType::Track as i32,
        event: if sent { "Message Sent" } else { "Delivery Failed" }.to_owned(),
        identifiers: match kind.is_empty() {
            true => Vec::new(),
            false => vec![Identifier {
                kind: kind.to_owned(),
                value: value.to_owned(),
            }],
        },
        user_id: String::new(),
        properties: Some(corvus_proto::raw::RawStruct::from_json(
            properties.as_object().expect("an object"),
        )),
        context: Some(corvus_proto::common::v1::Context {
            channel: channel_of(&send.channel) as i32,
            ..Default::default()
        }),
        timestamp: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: at.timestamp_subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

// The API's connectors and sends.

fn connector_def(c: &pb::Connector) -> Result<ConnectorDef, Status> {
    let channel = channel_name(c.channel);
    if channel.is_empty() {
        return Err(invalid_argument(
            "connector.channel",
            "a channel (not CHANNEL_UNSPECIFIED)",
        ));
    }
    let kind = match &c.kind {
        Some(pb::connector::Kind::Log(_)) => ConnectorKind::Log,
        Some(pb::connector::Kind::Webhook(w)) => {
            let url = reqwest::Url::parse(&w.url)
                .map_err(|e| invalid_argument("connector.webhook.url", format!("{:?}: {e}", w.url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid_argument(
                    "connector.webhook.url",
                    "an http or https URL with a host",
                ));
            }
            if w.secret.len() < 16 {
                return Err(invalid_argument("connector.webhook.secret", "at least 16 characters"));
            }
            ConnectorKind::Webhook {
                url: w.url.clone(),
                secret: w.secret.clone(),
            }
        }
        None => return Err(invalid_argument("connector.kind", "a webhook or the log")),
    };
    let rate = if c.rate_per_second == 0.0 {
        50.0
    } else {
        c.rate_per_second
    };
    if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
        return Err(invalid_argument("connector.rate_per_second", "in (0, 10000]"));
    }
    let max_attempts = if c.max_attempts == 0 { 8 } else { c.max_attempts };
    if max_attempts > 50 {
        return Err(invalid_argument("connector.max_attempts", "at most 50"));
    }
    let timeout_ms = match &c.timeout {
        None => 10_000,
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(invalid_argument("connector.timeout", "not negative"));
        }
        Some(t) => t.seconds as u64 * 1_000 + t.nanos as u64 / 1_000_000,
    };
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(invalid_argument("connector.timeout", "from 1 ms to 60 s"));
    }
    Ok(ConnectorDef {
        channel,
        kind,
        rate_per_second: rate,
        max_attempts,
        timeout_ms,
    })
}

/// A connector as the API shows it: the webhook's secret never.
fn connector_message(c: &ConnectorDef) -> pb::Connector {
    pb::Connector {
        channel: channel_of(&c.channel) as i32,
        kind: Some(match &c.kind {
            ConnectorKind::Log => pb::connector::Kind::Log(pb::LogConnector {}),
            ConnectorKind::Webhook { url, .. } => pb::connector::Kind::Webhook(pb::WebhookConnector {
                url: url.clone(),
                secret: String::new(),
            }),
        }),
        rate_per_second: c.rate_per_second,
        max_attempts: c.max_attempts,
        timeout: Some(prost_types::Duration {
            seconds: (c.timeout_ms / 1_000) as i64,
            nanos: ((c.timeout_ms % 1_000) * 1_000_000) as i32,
        }),
    }
}

fn send_message(s: &SendRow) -> pb::Send {
    pb::Send {
        decision_id: s.decision_id.to_string(),
        profile_id: s.profile.to_string(),
        campaign: s.campaign.clone(),
        channel: channel_of(&s.channel) as i32,
        state: match s.state {
            SendState::Pending => pb::SendState::Pending,
            SendState::Sent => pb::SendState::Sent,
            SendState::Dead => pb::SendState::Dead,
        } as i32,
        attempts: s.attempts,
        send_at: Some(timestamp(s.send_at)),
        next_attempt_at: (s.state == SendState::Pending).then(|| timestamp(s.next_attempt_at)),
        sent_at: s.sent_at.map(timestamp),
        last_error: s.last_error.clone(),
        receipt: s.receipt.clone(),
        to: s.recipient.clone(),
    }
}

impl Orchestration {
    pub(crate) async fn set_connector_api(
        &self,
        request: Request<pb::SetConnectorRequest>,
    ) -> Result<Response<pb::SetConnectorResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "set a connector")?;
        let connector = request
            .get_ref()
            .connector
            .as_ref()
            .ok_or_else(|| invalid_argument("connector", "required"))?;
        let def = connector_def(connector)?;
        self.store
            .set_connector(&principal.workspace, &def)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::SetConnectorResponse {
            connector: Some(connector_message(&def)),
        }))
    }

    pub(crate) async fn list_connectors_api(
        &self,
        request: Request<pb::ListConnectorsRequest>,
    ) -> Result<Response<pb::ListConnectorsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read connectors")?;
        let connectors = self
            .store
            .connectors(&principal.workspace)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListConnectorsResponse {
            connectors: connectors.iter().map(connector_message).collect(),
        }))
    }

    pub(crate) async fn delete_connector_api(
        &self,
        request: Request<pb::DeleteConnectorRequest>,
    ) -> Result<Response<pb::DeleteConnectorResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "delete a connector")?;
        let channel = channel_name(request.get_ref().channel);
        if channel.is_empty() {
            return Err(invalid_argument("channel", "a channel (not CHANNEL_UNSPECIFIED)"));
        }
        match self
            .store
            .delete_connector(&principal.workspace, &channel)
            .await
            .map_err(storage_status)?
        {
            true => Ok(Response::new(pb::DeleteConnectorResponse {})),
            false => Err(Status::not_found(format!("no connector is set for {channel}"))),
        }
    }

    pub(crate) async fn list_sends_api(
        &self,
        request: Request<pb::ListSendsRequest>,
    ) -> Result<Response<pb::ListSendsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read sends")?;
        let req = request.into_inner();
        let state = match pb::SendState::try_from(req.state) {
            Ok(pb::SendState::Unspecified) => None,
            Ok(pb::SendState::Pending) => Some(SendState::Pending),
            Ok(pb::SendState::Sent) => Some(SendState::Sent),
            Ok(pb::SendState::Dead) => Some(SendState::Dead),
            Err(_) => return Err(invalid_argument("state", format!("{} is not a send state", req.state))),
        };
        let (size, after) = page::<uuid::Uuid>(req.page.as_ref())?;
        let sends = self
            .store
            .sends(&principal.workspace, state, after, size)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListSendsResponse {
            page: next_page(sends.len(), size, sends.last().map(|s| s.decision_id)),
            sends: sends.iter().map(send_message).collect(),
        }))
    }

    pub(crate) async fn retry_send_api(
        &self,
        request: Request<pb::RetrySendRequest>,
    ) -> Result<Response<pb::RetrySendResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "retry a send")?;
        let id = &request.get_ref().decision_id;
        let parsed = id
            .parse()
            .map_err(|_| invalid_argument("decision_id", format!("{id:?} is not a decision id")))?;
        let send = self
            .store
            .retry_send(&principal.workspace, parsed, Utc::now())
            .await
            .map_err(storage_status)?
            .ok_or_else(|| Status::failed_precondition(format!("no dead send for decision {id}")))?;
        Ok(Response::new(pb::RetrySendResponse {
            send: Some(send_message(&send)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_ten_minutes() {
        let seconds: Vec<i64> = [1, 2, 3, 4, 10, 11, 30]
            .iter()
            .map(|&n| backoff(n).num_seconds())
            .collect();
        assert_eq!(seconds, [1, 2, 4, 8, 512, 600, 600]);
    }
}
