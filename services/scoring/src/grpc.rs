//! gRPC handlers: check the role, parse, call the service, map the error. No SQL here.

use std::collections::HashMap;
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
use crate::domain::engagement::{self, Preference, SendTime};
use crate::domain::features::{Answers, Features};
use crate::domain::rfm::{Rfm, RfmModel, RfmScore};
use crate::domain::segments::{self, Segment};
use crate::models::{AFFINITY, CLV, ClvFit, ClvModel, ENGAGEMENT, Fitted, RFM, SEGMENTS, SegmentsFit, Unit};
use crate::propensity::PROPENSITY;
use crate::service::{Scoring, ScoringError};

mod audiences;

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

fn named<V>(pairs: impl IntoIterator<Item = (String, V)>) -> HashMap<String, V> {
    pairs.into_iter().collect()
}

/// Any stored model as the API shows it.
pub fn fitted_message(fitted: &Fitted) -> pb::Model {
    match fitted {
        Fitted::Clv(m) => model_message(m),
        Fitted::Rfm(f) => {
            let bounds = [
                ("recency", &f.model.recency),
                ("frequency", &f.model.frequency),
                ("monetary", &f.model.monetary),
            ];
            pb::Model {
                kind: pb::ModelKind::Rfm as i32,
                fitted_at: Some(timestamp(f.fitted_at)),
                as_of: Some(timestamp(f.as_of)),
                parameters: named(bounds.iter().flat_map(|(name, b)| {
                    [20, 40, 60, 80]
                        .iter()
                        .zip(b.iter())
                        .map(move |(q, v)| (format!("{name}_q{q}"), *v))
                })),
                counts: named([
                    ("customers".to_owned(), f.model.customers),
                    ("purchases".to_owned(), f.purchases),
                ]),
                ..pb::Model::default()
            }
        }
        Fitted::Engagement(f) => pb::Model {
            kind: pb::ModelKind::Engagement as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named(f.priors.iter().flat_map(|(channel, p)| {
                [
                    (format!("{channel}_alpha"), p.alpha),
                    (format!("{channel}_beta"), p.beta),
                ]
            })),
            counts: named([
                ("profiles".to_owned(), f.profiles),
                ("engaging_events".to_owned(), f.engaging_events),
            ]),
            ..pb::Model::default()
        },
        Fitted::Segments(f) => pb::Model {
            kind: pb::ModelKind::Segments as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named(
                [
                    ("k".to_owned(), f.segmentation.segments.len() as f64),
                    ("silhouette".to_owned(), f.segmentation.silhouette),
                    ("inertia".to_owned(), f.segmentation.inertia),
                ]
                .into_iter()
                .chain(
                    f.segmentation
                        .tried
                        .iter()
                        .map(|(k, s)| (format!("silhouette_k{k}"), *s)),
                ),
            ),
            counts: named([("profiles".to_owned(), f.segmentation.profiles)]),
            ..pb::Model::default()
        },
        Fitted::Propensity(f) => pb::Model {
            kind: pb::ModelKind::Propensity as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named([
                ("alpha".to_owned(), f.model.ftrl.params.alpha),
                ("beta".to_owned(), f.model.ftrl.params.beta),
                ("l1".to_owned(), f.model.ftrl.params.l1),
                ("l2".to_owned(), f.model.ftrl.params.l2),
                ("platt_a".to_owned(), f.model.platt.a),
                ("platt_b".to_owned(), f.model.platt.b),
                ("horizon_days".to_owned(), f64::from(f.horizon_days)),
            ]),
            counts: named([
                ("training_examples".to_owned(), f.training_examples),
                ("holdout_examples".to_owned(), f.holdout_examples),
                ("coordinates".to_owned(), f.model.ftrl.coordinates() as u64),
                ("outcomes_learnt".to_owned(), f.model.ftrl.seen()),
            ]),
            diagnostics: crate::propensity::diagnostics(f).into_iter().collect(),
            ..pb::Model::default()
        },
        Fitted::Affinity(f) => pb::Model {
            kind: pb::ModelKind::Affinity as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named([
                ("min_support".to_owned(), f.min_support),
                ("min_confidence".to_owned(), f.min_confidence),
            ]),
            counts: named([
                ("orders".to_owned(), f.orders),
                ("products".to_owned(), f.products),
                ("rules".to_owned(), f.rules.len() as u64),
            ]),
            ..pb::Model::default()
        },
    }
}

/// What sets a segment apart, in words: its three furthest features.
fn describe(s: &Segment) -> String {
    let mut order: Vec<usize> = (0..s.distinction.len()).collect();
    order.sort_by(|a, b| s.distinction[*b].abs().total_cmp(&s.distinction[*a].abs()));
    order
        .iter()
        .take(3)
        .map(|j| {
            let z = s.distinction[*j];
            format!(
                "{} {:.1} sd {}",
                segments::FEATURES[*j],
                z.abs(),
                if z >= 0.0 { "above" } else { "below" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary_message(s: &Segment, profiles: u64) -> pb::SegmentSummary {
    pb::SegmentSummary {
        segment_id: s.id,
        name: s.name.clone(),
        size: s.size,
        share: if profiles > 0 {
            s.size as f64 / profiles as f64
        } else {
            0.0
        },
        description: describe(s),
    }
}

fn rule_message(r: &Rule) -> pb::AssociationRule {
    pb::AssociationRule {
        antecedents: r.antecedents.clone(),
        consequent: r.consequent.clone(),
        support: r.support,
        confidence: r.confidence,
        lift: r.lift,
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

fn rfm_message((score, rfm, model): &(RfmScore, Rfm, RfmModel)) -> pb::Rfm {
    pb::Rfm {
        recency: u32::from(score.recency),
        frequency: u32::from(score.frequency),
        monetary: u32::from(score.monetary),
        cell: score.cell.to_owned(),
        explanation: format!(
            "last purchase {:.1} days ago, {} orders, {:.2} spent; the workspace's quintiles: recency {:?} days, \
             orders {:?}, spend {:?}",
            rfm.recency_days, rfm.frequency, rfm.monetary, model.recency, model.frequency, model.monetary
        ),
    }
}

fn preference_message(p: &Preference) -> pb::ChannelPreference {
    let explanation = match (&p.best, p.channels.iter().any(|c| c.responses > 0.0)) {
        (Some((best, confidence)), _) => {
            format!("{best} has the highest posterior response rate, above the next with probability {confidence:.2}")
        }
        (None, false) => "not enough data: no response from this person yet; the rates are the workspace's".to_owned(),
        (None, true) => format!(
            "not enough data: no channel's response rate is above the next's with probability {}",
            engagement::CONFIDENT
        ),
    };
    pb::ChannelPreference {
        channels: p
            .channels
            .iter()
            .map(|c| pb::ChannelRate {
                channel: c.channel.clone(),
                messages: c.messages,
                responses: c.responses,
                rate: c.mean(),
                alpha: c.alpha,
                beta: c.beta,
            })
            .collect(),
        best_channel: p.best.as_ref().map(|(c, _)| c.clone()).unwrap_or_default(),
        confidence: p.best.as_ref().map_or(0.0, |(_, p)| *p),
        explanation,
    }
}

fn send_time_message(t: &SendTime) -> pb::SendTime {
    pb::SendTime {
        hour_of_week: u32::from(t.hour_of_week),
        share: t.share,
        events: t.events,
        explanation: format!(
            "{} engaging events of the person's, with the workspace's hours weighing as {} more",
            t.events,
            engagement::SEND_TIME_PRIOR
        ),
    }
}

fn answers(a: &Answers) -> (u64, Option<f64>, Option<f64>) {
    (a.count, a.mean(), a.latest)
}

fn features_message(f: &Features, as_of: DateTime<Utc>) -> pb::Features {
    let spend = |s: &crate::domain::features::Spend| pb::Spend {
        quantity: s.quantity,
        spend: s.spend,
        orders: s.orders,
    };
    let (nps_answers, nps_mean, nps_latest) = answers(&f.nps);
    let (csat_answers, csat_mean, csat_latest) = answers(&f.csat);
    let (sentiment_answers, sentiment_mean, _) = answers(&f.sentiment);
    pb::Features {
        events: f.events,
        first_seen: f.first_seen.map(timestamp),
        last_seen: f.last_seen.map(timestamp),
        purchases: Some(pb::Purchases {
            orders: f.orders,
            purchase_days: f.purchase_days.len() as u64,
            revenue: f.revenue,
            average_order_value: if f.orders > 0 { f.revenue / f.orders as f64 } else { 0.0 },
            first_purchase: f.first_purchase.map(timestamp),
            last_purchase: f.last_purchase.map(timestamp),
            recency_days: f.recency_days(as_of),
        }),
        channels: f
            .channels
            .iter()
            .map(|(name, e)| {
                let engagement = pb::Engagement {
                    sent: e.sent,
                    delivered: e.delivered,
                    opened: e.opened,
                    clicked: e.clicked,
                    converted: e.converted,
                    unsubscribed: e.unsubscribed,
                };
                (name.clone(), engagement)
            })
            .collect(),
        categories: f.categories.iter().map(|(k, s)| (k.clone(), spend(s))).collect(),
        products: f.products.iter().map(|(k, s)| (k.clone(), spend(s))).collect(),
        satisfaction: Some(pb::Satisfaction {
            nps_answers,
            nps_mean,
            nps_latest,
            csat_answers,
            csat_mean,
            csat_latest,
            sentiment_answers,
            sentiment_mean,
            sentiment_scored: f.sentiment_scored,
        }),
        hour_of_week: f.hour_of_week.clone(),
    }
}

/// The stored model as the API shows it.
pub fn model_message(m: &ClvModel) -> pb::Model {
    let parameters: HashMap<String, f64> = [
        ("r", m.bg_nbd.r),
        ("alpha", m.bg_nbd.alpha),
        ("a", m.bg_nbd.a),
        ("b", m.bg_nbd.b),
        ("p", m.gamma_gamma.p),
        ("q", m.gamma_gamma.q),
        ("v", m.gamma_gamma.v),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    pb::Model {
        kind: pb::ModelKind::Clv as i32,
        fitted_at: Some(timestamp(m.fitted_at)),
        as_of: Some(timestamp(m.as_of)),
        unit: m.unit.as_str().to_owned(),
        parameters,
        log_likelihood: [
            ("bg_nbd".to_owned(), m.bg_nbd_log_likelihood),
            ("gamma_gamma".to_owned(), m.gamma_gamma_log_likelihood),
        ]
        .into(),
        counts: [
            ("customers".to_owned(), m.customers),
            ("repeat_buyers".to_owned(), m.repeat_buyers),
            ("purchases".to_owned(), m.purchases),
        ]
        .into(),
        diagnostics: [
            ("bg_nbd_iterations".to_owned(), f64::from(m.bg_nbd_iterations)),
            ("bg_nbd_gradient".to_owned(), m.bg_nbd_gradient),
            ("gamma_gamma_iterations".to_owned(), f64::from(m.gamma_gamma_iterations)),
            ("gamma_gamma_gradient".to_owned(), m.gamma_gamma_gradient),
        ]
        .into(),
        clv_months: m.clv_months,
        discount_rate: m.discount_rate,
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
        let scores = self.scoring.scores(ws, profile, as_of, horizon).await?;
        let computed_traits = self
            .scoring
            .trait_values(ws, scores.profile, as_of)
            .await?
            .into_iter()
            .filter_map(|(name, value)| Some((name, corvus_proto::json::json_to_value(&value?))))
            .collect();
        let audiences = self
            .scoring
            .store
            .memberships(ws, scores.profile)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetScoresResponse {
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
            lifetime_value: scores.lifetime_value.map(|(p, model)| pb::LifetimeValue {
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
                .map(|(segment_id, name, distance)| pb::SegmentAssignment {
                    segment_id,
                    name,
                    distance,
                }),
        }))
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
