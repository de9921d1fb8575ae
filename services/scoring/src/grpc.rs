//! gRPC handlers: check the role, parse, call the service, map the error. No SQL here.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::ProfileId;
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_server::ScoringService;
use futures::Stream;
use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use crate::domain::affinity::Rule;
use crate::domain::segments;
use crate::models::{AFFINITY, CLV, ClvFit, ENGAGEMENT, Fitted, RFM, SEGMENTS, SegmentsFit, Unit};
use crate::propensity::PROPENSITY;
use crate::service::{Scoring, ScoringError};

pub mod audiences;
mod messages;

use messages::{features_message, preference_message, rfm_message, rule_message, send_time_message, summary_message};
pub use messages::{fitted_message, model_message};

pub struct ScoringApi {
    pub scoring: Scoring,
}

impl ScoringApi {
    async fn segments(&self, ws: &corvus_proto::WorkspaceId) -> Result<SegmentsFit, Status> {
        match self.scoring.model(ws, SEGMENTS).await? {
            Some(Fitted::Segments(fit)) => Ok(fit),
            _ => Err(Status::not_found(
                "no segments have been fitted in this workspace; FitModel (MODEL_KIND_SEGMENTS) fits them",
            )),
        }
    }
}

impl From<ScoringError> for Status {
    fn from(err: ScoringError) -> Self {
        match err {
            ScoringError::Invalid { field, reason } => invalid_argument(field, reason),
            ScoringError::NotFound(message) => Status::not_found(message),
            ScoringError::AlreadyExists(message) => Status::already_exists(message),
            ScoringError::Precondition(message) => Status::failed_precondition(message),
            ScoringError::Storage(e) => storage_status(e),
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn time_of(field: &'static str, t: Option<&Timestamp>) -> Result<DateTime<Utc>, Status> {
    match t {
        None => Ok(Utc::now()),
        Some(t) => u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| invalid_argument(field, "not a valid time")),
    }
}

/// The stored name of a model kind.
fn kind(field: &'static str, kind: i32) -> Result<&'static str, Status> {
    match pb::ModelKind::try_from(kind) {
        Ok(pb::ModelKind::Clv) => Ok(CLV),
        Ok(pb::ModelKind::Rfm) => Ok(RFM),
        Ok(pb::ModelKind::Engagement) => Ok(ENGAGEMENT),
        Ok(pb::ModelKind::Affinity) => Ok(AFFINITY),
        Ok(pb::ModelKind::Segments) => Ok(SEGMENTS),
        Ok(pb::ModelKind::Propensity) => Ok(PROPENSITY),
        Ok(pb::ModelKind::Unspecified) => Err(invalid_argument(
            field,
            "required: MODEL_KIND_CLV, _RFM, _ENGAGEMENT, _AFFINITY, _SEGMENTS or _PROPENSITY",
        )),
        Err(_) => Err(invalid_argument(field, format!("unknown model kind {kind}"))),
    }
}

/// A share above 0 and at most 1, defaulted.
fn share(field: &'static str, value: Option<f64>, default: f64) -> Result<f64, Status> {
    match value {
        None => Ok(default),
        Some(v) if v > 0.0 && v <= 1.0 => Ok(v),
        Some(v) => Err(invalid_argument(field, format!("{v} is not above 0 and at most 1"))),
    }
}

fn profile_id(value: &str) -> Result<ProfileId, Status> {
    if value.is_empty() {
        return Err(invalid_argument("profile_id", "required"));
    }
    value
        .parse()
        .map_err(|_| invalid_argument("profile_id", "not a profile id (a UUID)"))
}

type FitStream = Pin<Box<dyn Stream<Item = Result<pb::FitModelResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn get_scores(
        &self,
        request: Request<pb::GetScoresRequest>,
    ) -> Result<Response<pb::GetScoresResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read scores")?;
        let request = request.into_inner();
        let profile = profile_id(&request.profile_id)?;
        let as_of = time_of("as_of", request.as_of.as_ref())?;
        // Unasked, `as_of` is now, taken before anything is read.
        let as_of_now = request.as_of.is_none();
        let horizon = match request.horizon {
            0.0 => None,
            h if h.is_finite() && h > 0.0 => Some(h),
            _ => {
                return Err(invalid_argument(
                    "horizon",
                    "must be a positive number of the model's time units",
                ));
            }
        };
        let ws = &principal.workspace;
        // Scores as of now, with the default horizon: the person's card when it is held
        // and current (see `cards`).
        let current = as_of_now && horizon.is_none();
        if current && let Some(card) = self.scoring.card(ws, profile).await {
            return Ok(Response::new(card));
        }
        let scores = self.scoring.scores(ws, profile, as_of, horizon).await?;
        // The person's computed traits and audiences, read side by side.
        let (computed_traits, audiences) = tokio::join!(
            self.scoring.trait_values(ws, scores.profile, as_of),
            self.scoring.store.memberships(ws, scores.profile)
        );
        let computed_traits = computed_traits?;
        let audiences = audiences.map_err(storage_status)?;
        let response = scores_response(&scores, computed_traits, audiences);
        // A merged id's scores are its survivor's: only a profile that stands has a card.
        if current && scores.profile == profile {
            self.scoring.keep_card(ws, profile, as_of, &response);
        }
        Ok(Response::new(response))
    }

    type FitModelStream = FitStream;

    async fn fit_model(&self, request: Request<pb::FitModelRequest>) -> Result<Response<FitStream>, Status> {
        let principal = authorise(&request, Role::Admin, "fit a model")?;
        let request = request.into_inner();
        let kind = kind("kind", request.kind)?;
        let unit = Unit::parse(&request.unit)
            .ok_or_else(|| invalid_argument("unit", format!("{:?}: expected day, week or month", request.unit)))?;
        let clv_months = match request.clv_months {
            0 => 12,
            m @ 1..=600 => m,
            _ => return Err(invalid_argument("clv_months", "must be between 1 and 600")),
        };
        let discount_rate = request.discount_rate.unwrap_or(0.01);
        if !(0.0..1.0).contains(&discount_rate) {
            return Err(invalid_argument(
                "discount_rate",
                "must be at least 0 and below 1 (a month's rate)",
            ));
        }
        let min_support = share("min_support", request.min_support, 0.01)?;
        let min_confidence = share("min_confidence", request.min_confidence, 0.25)?;
        let k = match request.k {
            0 => None,
            k @ 2..=20 => Some(k as usize),
            _ => return Err(invalid_argument("k", "between 2 and 20, or 0 to choose by silhouette")),
        };
        let horizon_days = match request.horizon_days {
            0 => 30,
            d @ 1..=365 => d,
            _ => return Err(invalid_argument("horizon_days", "at most 365")),
        };
        let restarts = match request.restarts {
            0 => segments::DEFAULT_RESTARTS,
            r @ 1..=20 => r as usize,
            _ => return Err(invalid_argument("restarts", "at most 20")),
        };
        let fit = ClvFit {
            as_of: time_of("as_of", request.as_of.as_ref())?,
            unit,
            clv_months,
            discount_rate,
        };
        let scoring = self.scoring.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let progress = |stage: &str, done: f64| {
                let _ = tx.send(Ok(pb::FitModelResponse {
                    stage: stage.to_owned(),
                    progress: done,
                    model: None,
                }));
            };
            let ws = &principal.workspace;
            let result = match kind {
                CLV => scoring.fit_clv(ws, fit, progress).await.map(Fitted::Clv),
                RFM => scoring.fit_rfm(ws, fit.as_of, progress).await.map(Fitted::Rfm),
                PROPENSITY => scoring
                    .fit_propensity(ws, fit.as_of, horizon_days, progress)
                    .await
                    .map(|f| Fitted::Propensity(Box::new(f))),
                SEGMENTS => scoring
                    .fit_segments(ws, fit.as_of, k, restarts, progress)
                    .await
                    .map(Fitted::Segments),
                AFFINITY => scoring
                    .fit_affinity(ws, fit.as_of, min_support, min_confidence, progress)
                    .await
                    .map(Fitted::Affinity),
                _ => scoring
                    .fit_engagement(ws, fit.as_of, progress)
                    .await
                    .map(Fitted::Engagement),
            };
            let _ = tx.send(match result {
                Ok(model) => Ok(pb::FitModelResponse {
                    stage: "fitted".to_owned(),
                    progress: 1.0,
                    model: Some(fitted_message(&model)),
                }),
                Err(err) => Err(err.into()),
            });
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Result<Response<pb::GetModelResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read a model")?;
        let kind = kind("kind", request.get_ref().kind)?;
        let model = self.scoring.model(&principal.workspace, kind).await?.ok_or_else(|| {
            Status::not_found(format!(
                "no {kind} model has been fitted in this workspace; FitModel fits one"
            ))
        })?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(fitted_message(&model)),
        }))
    }

    async fn list_association_rules(
        &self,
        request: Request<pb::ListAssociationRulesRequest>,
    ) -> Result<Response<pb::ListAssociationRulesResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read association rules")?;
        let request = request.into_inner();
        let (size, after) = page::<usize>(request.page.as_ref())?;
        let Some(Fitted::Affinity(fit)) = self.scoring.model(&principal.workspace, AFFINITY).await? else {
            return Err(Status::not_found(
                "no affinity model has been fitted in this workspace; FitModel (MODEL_KIND_AFFINITY) fits one",
            ));
        };
        let product = request.product.as_str();
        let start = after.unwrap_or(0);
        let rules: Vec<(usize, &Rule)> = fit
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                product.is_empty() || r.consequent == product || r.antecedents.iter().any(|a| a == product)
            })
            .skip_while(|(i, _)| *i < start)
            .take(size as usize)
            .collect();
        Ok(Response::new(pb::ListAssociationRulesResponse {
            page: next_page(rules.len(), size, rules.last().map(|(i, _)| i + 1)),
            rules: rules.iter().map(|(_, r)| rule_message(r)).collect(),
            orders: fit.orders,
        }))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read segments")?;
        let fit = self.segments(&principal.workspace).await?;
        let s = &fit.segmentation;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: s.segments.iter().map(|x| summary_message(x, s.profiles)).collect(),
            profiles: s.profiles,
            silhouette: s.silhouette,
        }))
    }

    async fn describe_segment(
        &self,
        request: Request<pb::DescribeSegmentRequest>,
    ) -> Result<Response<pb::DescribeSegmentResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read segments")?;
        let id = request.get_ref().segment_id;
        let fit = self.segments(&principal.workspace).await?;
        let s = &fit.segmentation;
        let segment = s
            .segments
            .iter()
            .find(|x| x.id == id)
            .ok_or_else(|| Status::not_found(format!("no segment {id} in this workspace")))?;
        let mut features: Vec<pb::SegmentFeature> = segments::FEATURES
            .iter()
            .enumerate()
            .map(|(j, name)| pb::SegmentFeature {
                name: (*name).to_owned(),
                segment_mean: segment.centre[j],
                workspace_mean: s.means[j],
                difference: segment.distinction[j],
            })
            .collect();
        features.sort_by(|a, b| b.difference.abs().total_cmp(&a.difference.abs()));
        Ok(Response::new(pb::DescribeSegmentResponse {
            segment: Some(summary_message(segment, s.profiles)),
            features,
        }))
    }

    async fn create_computed_trait(
        &self,
        request: Request<pb::CreateComputedTraitRequest>,
    ) -> Result<Response<pb::CreateComputedTraitResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "define a computed trait")?;
        let definition = audiences::trait_from(request.get_ref().computed_trait.as_ref())?;
        let created_at = self
            .scoring
            .create_trait(&principal.workspace, definition.clone())
            .await?;
        Ok(Response::new(pb::CreateComputedTraitResponse {
            computed_trait: Some(audiences::trait_message(&definition, created_at)),
        }))
    }

    async fn list_computed_traits(
        &self,
        request: Request<pb::ListComputedTraitsRequest>,
    ) -> Result<Response<pb::ListComputedTraitsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read computed traits")?;
        let traits = self.scoring.computed_traits(&principal.workspace).await?;
        Ok(Response::new(pb::ListComputedTraitsResponse {
            computed_traits: traits.iter().map(|(t, at)| audiences::trait_message(t, *at)).collect(),
        }))
    }

    async fn delete_computed_trait(
        &self,
        request: Request<pb::DeleteComputedTraitRequest>,
    ) -> Result<Response<pb::DeleteComputedTraitResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "delete a computed trait")?;
        self.scoring
            .delete_trait(&principal.workspace, &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::DeleteComputedTraitResponse {}))
    }

    async fn create_audience(
        &self,
        request: Request<pb::CreateAudienceRequest>,
    ) -> Result<Response<pb::CreateAudienceResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "define an audience")?;
        let audience = request
            .get_ref()
            .audience
            .as_ref()
            .ok_or_else(|| invalid_argument("audience", "required"))?;
        let condition = audiences::condition_from("audience.definition", audience.definition.as_ref(), 0)?;
        let created = self
            .scoring
            .create_audience(&principal.workspace, &audience.name, &audience.description, condition)
            .await?;
        Ok(Response::new(pb::CreateAudienceResponse {
            audience: Some(audiences::audience_message(&created)),
        }))
    }

    async fn list_audiences(
        &self,
        request: Request<pb::ListAudiencesRequest>,
    ) -> Result<Response<pb::ListAudiencesResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read audiences")?;
        let list = self.scoring.audiences(&principal.workspace).await?;
        Ok(Response::new(pb::ListAudiencesResponse {
            audiences: list.iter().map(audiences::audience_message).collect(),
        }))
    }

    async fn delete_audience(
        &self,
        request: Request<pb::DeleteAudienceRequest>,
    ) -> Result<Response<pb::DeleteAudienceResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "delete an audience")?;
        self.scoring
            .delete_audience(&principal.workspace, &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::DeleteAudienceResponse {}))
    }

    async fn estimate_audience(
        &self,
        request: Request<pb::EstimateAudienceRequest>,
    ) -> Result<Response<pb::EstimateAudienceResponse>, Status> {
        let principal = authorise(&request, Role::Read, "estimate an audience")?;
        let condition = audiences::condition_from("definition", request.get_ref().definition.as_ref(), 0)?;
        let e = self.scoring.estimate(&principal.workspace, &condition).await?;
        Ok(Response::new(pb::EstimateAudienceResponse {
            size: e.size,
            profiles: e.profiles,
            evaluated: e.evaluated,
            low: e.low,
            high: e.high,
        }))
    }

    async fn list_audience_members(
        &self,
        request: Request<pb::ListAudienceMembersRequest>,
    ) -> Result<Response<pb::ListAudienceMembersResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read an audience's members")?;
        let request = request.into_inner();
        let (size, after) = page::<ProfileId>(request.page.as_ref())?;
        let ws = &principal.workspace;
        self.scoring.audience(ws, &request.name).await?;
        let members = self
            .scoring
            .store
            .members(ws, &request.name, after, i64::from(size))
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListAudienceMembersResponse {
            page: next_page(members.len(), size, members.last().map(|(p, _)| *p)),
            members: members
                .iter()
                .map(|(p, since)| pb::AudienceMember {
                    profile_id: p.to_string(),
                    since: Some(timestamp(*since)),
                })
                .collect(),
        }))
    }

    type StreamAudienceChangesStream = audiences::ChangeStream;

    async fn stream_audience_changes(
        &self,
        request: Request<pb::StreamAudienceChangesRequest>,
    ) -> Result<Response<audiences::ChangeStream>, Status> {
        let principal = authorise(&request, Role::Read, "stream an audience's changes")?;
        let request = request.into_inner();
        let ws = principal.workspace.clone();
        self.scoring.audience(&ws, &request.name).await?;
        let after = match request.after_sequence {
            Some(n) => i64::try_from(n).map_err(|_| invalid_argument("after_sequence", "too large"))?,
            None => self
                .scoring
                .store
                .last_change(&ws, &request.name)
                .await
                .map_err(storage_status)?,
        };
        Ok(Response::new(audiences::change_stream(
            self.scoring.clone(),
            ws,
            request.name,
            after,
        )))
    }

    async fn get_recommendations(
        &self,
        request: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read recommendations")?;
        let request = request.into_inner();
        let profile = profile_id(&request.profile_id)?;
        let limit = match request.limit {
            0 => 10,
            n @ 1..=100 => n as usize,
            _ => return Err(invalid_argument("limit", "at most 100")),
        };
        let (profile, suggestions) = self
            .scoring
            .recommendations(&principal.workspace, profile, limit, request.include_owned)
            .await?;
        Ok(Response::new(pb::GetRecommendationsResponse {
            profile_id: profile.to_string(),
            recommendations: suggestions
                .iter()
                .map(|s| pb::Recommendation {
                    product: s.product.clone(),
                    explanation: format!(
                        "bought {}: {:.0}% of such orders hold {} too, {:.2} times its usual share",
                        s.rule.antecedents.join(" and "),
                        s.rule.confidence * 100.0,
                        s.product,
                        s.rule.lift
                    ),
                    rule: Some(rule_message(&s.rule)),
                })
                .collect(),
        }))
    }
}

/// Scoring as a consumer of identity's log over gRPC, when it runs apart.
pub struct LogConsumer {
    pub scoring: Scoring,
}

#[tonic::async_trait]
impl EventConsumerService for LogConsumer {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        authorise(&request, Role::Service, "deliver a log's entries")?;
        let request = request.into_inner();
        if !request.events.is_empty() {
            return Err(invalid_argument(
                "events",
                "scoring consumes identity's log (entries), not the event log",
            ));
        }
        let (failures, erasures) = self.scoring.deliver(&request.entries).await.map_err(storage_status)?;
        Ok(Response::new(DeliverResponse {
            failures: failures
                .into_iter()
                .map(|f| DeliveryFailure {
                    event_id: f.event_id,
                    reason: f.reason,
                })
                .collect(),
            erasures,
        }))
    }
}

/// GetScores' answer: the profile's scores, its computed traits and its audiences.
pub(crate) fn scores_response(
    scores: &crate::service::Scores,
    computed_traits: std::collections::BTreeMap<String, Option<serde_json::Value>>,
    audiences: Vec<String>,
) -> pb::GetScoresResponse {
    let computed_traits = computed_traits
        .into_iter()
        .filter_map(|(name, value)| Some((name, corvus_proto::json::json_to_value(&value?))))
        .collect();
    pb::GetScoresResponse {
        computed_traits,
        audiences,
        propensity: scores.propensity.as_ref().map(|(p, fit)| pb::Propensity {
            probability: p.probability,
            horizon_days: fit.horizon_days,
            churn_risk: p.churn_risk,
            explanation: p
                .drivers
                .iter()
                .map(|(name, c)| format!("{name} {c:+.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            model_fitted_at: Some(timestamp(fit.fitted_at)),
        }),
        profile_id: scores.profile.to_string(),
        as_of: Some(timestamp(scores.as_of)),
        features: Some(features_message(&scores.features, scores.as_of)),
        lifetime_value: scores.lifetime_value.as_ref().map(|(p, model)| pb::LifetimeValue {
            frequency: p.customer.x,
            recency: p.customer.t_x,
            age: p.customer.t,
            monetary_value: p.customer.m,
            p_alive: p.p_alive,
            expected_purchases: p.expected_purchases,
            horizon: p.horizon,
            expected_spend: p.expected_spend,
            clv: p.clv,
            unit: model.unit.as_str().to_owned(),
            model_fitted_at: Some(timestamp(model.fitted_at)),
        }),
        rfm: scores.rfm.as_ref().map(rfm_message),
        channel_preference: scores.channel_preference.as_ref().map(preference_message),
        send_time: scores.send_time.as_ref().map(send_time_message),
        segment: scores
            .segment
            .as_ref()
            .map(|(segment_id, name, distance)| pb::SegmentAssignment {
                segment_id: *segment_id,
                name: name.clone(),
                distance: *distance,
            }),
    }
}
