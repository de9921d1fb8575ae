//! Satisfaction rules: the workspace's NPS, CSAT or mentions, as measurement keeps them,
//! looked at periodically; a significant drop (or a spike of mentions) raises an alert
//! on the same stream and webhooks as the rules that judge events, naming no person.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use corvus_proto::measurement::v1::{EstimatePolicyValueRequest, EstimatePolicyValueResponse};
use corvus_proto::{ProfileId, WorkspaceId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::alert::{Condition, Feedback, Kind, Span, Summary, satisfaction_drop};
use crate::people::Caller;
use crate::service::{Orchestration, OrchestrationError};
use crate::storage::{NewAlert, Raised};

/// What orchestration reads of measurement, in this process or over gRPC.
#[async_trait]
pub trait MeasurementSource: Send + Sync {
    /// The workspace's feedback of a kind over the UTC days `from` to `to`, inclusive.
    async fn span(&self, caller: &Caller, feedback: Feedback, from: NaiveDate, to: NaiveDate) -> Result<Span, String>;

    /// An off-policy estimate of a candidate policy over a campaign's logged decisions
    /// (`EstimatePolicyValue`); `Err` says why there is none.
    async fn estimate(
        &self,
        caller: &Caller,
        request: EstimatePolicyValueRequest,
    ) -> Result<EstimatePolicyValueResponse, String>;
}

impl Orchestration {
    /// Keeps satisfaction rules' watch on `source`'s figures.
    pub fn spawn_satisfaction_watch(&self, every: Duration, stop: CancellationToken) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let Some(_) = &self.feedback else { return tasks };
        let this = self.clone();
        tasks.spawn(async move {
            while stop.run_until_cancelled(tokio::time::sleep(every)).await.is_some() {
                if let Err(error) = this.check_satisfaction(Utc::now()).await {
                    tracing::warn!(%error, "satisfaction rules could not be looked at");
                }
            }
        });
        tasks
    }

    /// Looks at every satisfaction rule once, as of `now`: the span of the rule's window
    /// that ends yesterday (the last whole day) against the one before it. Returns the
    /// alerts raised.
    pub async fn check_satisfaction(&self, now: DateTime<Utc>) -> Result<u64, OrchestrationError> {
        let Some(source) = self.feedback.clone() else {
            return Ok(0);
        };
        let mut raised = 0;
        for (ws, stored) in self.store.rules_of_kind(Kind::SatisfactionDrop).await? {
            let rule = &stored.rule;
            let Condition::SatisfactionDrop {
                feedback, window_days, ..
            } = rule.condition
            else {
                continue;
            };
            // Completed days only: a day under way holds fewer answers and mentions than
            // a whole one, and would look like a drop in volume.
            let yesterday = now.date_naive() - chrono::Days::new(1);
            let days = chrono::Days::new(u64::from(window_days));
            let (from, before) = (yesterday - days + chrono::Days::new(1), yesterday - days);
            let caller = self.service_caller(&ws);
            let spans = async {
                let current = source.span(&caller, feedback, from, yesterday).await?;
                let previous = source
                    .span(&caller, feedback, before - days + chrono::Days::new(1), before)
                    .await?;
                Ok::<_, String>((previous, current))
            };
            let (previous, current) = match spans.await {
                Ok(spans) => spans,
                Err(error) => {
                    tracing::warn!(workspace = %ws, rule = %rule.name, %error, "satisfaction rule skipped");
                    continue;
                }
            };
            let Some(reason) = satisfaction_drop(&rule.condition, &previous, &current) else {
                continue;
            };
            if self
                .raise_unpersonal(&ws, rule, reason, format!("{}:{yesterday}", feedback.as_str()), now)
                .await?
            {
                raised += 1;
            }
        }
        Ok(raised)
    }

    /// Raises an alert about no one, unless the rule is cooling down.
    async fn raise_unpersonal(
        &self,
        ws: &WorkspaceId,
        rule: &crate::domain::alert::Rule,
        reason: String,
        event_id: String,
        now: DateTime<Utc>,
    ) -> Result<bool, OrchestrationError> {
        let until = now + chrono::Duration::seconds(rule.cooldown_seconds as i64);
        let alert = NewAlert {
            id: Uuid::now_v7(),
            rule: rule.name.clone(),
            kind: rule.kind(),
            profile: ProfileId::from(Uuid::nil()),
            reason,
            event_id,
            raised_at: now,
            summary: Summary::default(),
            webhook: rule.webhook.is_some(),
        };
        match self.store.raise(ws, &alert, until).await? {
            Raised::Alert(raised) => {
                self.alerting.announce(rule.kind(), raised.webhook);
                Ok(true)
            }
            Raised::Cooling(_) => Ok(false),
        }
    }
}
