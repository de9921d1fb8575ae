//! Where identity meets scoring: GetProfile carries the profile's scores, asked of
//! scoring in this process or over gRPC with the caller's own key.

use async_trait::async_trait;
use corvus_identity::{Caller, ProfileScores, ScoresSource};
use corvus_platform::Principal;
use corvus_platform::server::WORKSPACE_HEADER;
use corvus_proto::ProfileId;
use corvus_proto::identity::v1::Score;
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use corvus_proto::scoring::v1::scoring_service_server::ScoringService;
use corvus_scoring::Scoring;
use corvus_scoring::grpc::ScoringApi;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// Products suggested on the profile.
const SUGGESTIONS: u32 = 3;

pub enum ScoringLink {
    /// Scoring in this process, called directly as the caller.
    Local(ScoringApi),
    /// Scoring in its own deployment.
    Remote(ScoringServiceClient<Channel>),
}

impl ScoringLink {
    pub fn local(scoring: Scoring) -> Self {
        Self::Local(ScoringApi { scoring })
    }

    /// Connects when first asked, and again whenever the connection is lost.
    pub fn remote(endpoint: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?.connect_lazy();
        Ok(Self::Remote(ScoringServiceClient::new(channel)))
    }

    async fn ask(
        &self,
        caller: &Caller,
        profile: ProfileId,
    ) -> (
        Result<Response<pb::GetScoresResponse>, Status>,
        Result<Response<pb::GetRecommendationsResponse>, Status>,
    ) {
        let scores = pb::GetScoresRequest {
            profile_id: profile.to_string(),
            ..Default::default()
        };
        let suggestions = pb::GetRecommendationsRequest {
            profile_id: profile.to_string(),
            limit: SUGGESTIONS,
            include_owned: false,
        };
        match self {
            Self::Local(api) => tokio::join!(
                api.get_scores(as_principal(&caller.principal, scores)),
                api.get_recommendations(as_principal(&caller.principal, suggestions))
            ),
            Self::Remote(client) => {
                let (mut a, mut b) = (client.clone(), client.clone());
                tokio::join!(
                    a.get_scores(as_caller(&caller.metadata, scores)),
                    b.get_recommendations(as_caller(&caller.metadata, suggestions))
                )
            }
        }
    }
}

/// A request made as the caller, as the auth layer leaves one.
pub(crate) fn as_principal<T>(principal: &Principal, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(principal.clone());
    request
}

/// A request that carries the caller's key (and the workspace it named).
pub(crate) fn as_caller<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    for header in ["authorization", WORKSPACE_HEADER, "traceparent", "tracestate"] {
        if let Some(value) = metadata.get(header) {
            request.metadata_mut().insert(header, value.clone());
        }
    }
    request
}

/// An answer, or none where scoring holds nothing to say (no events of the profile yet,
/// no affinity model fitted).
fn answer<T>(result: Result<Response<T>, Status>) -> Result<Option<T>, String> {
    match result {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(format!("scoring answered {:?}: {}", status.code(), status.message())),
    }
}

#[async_trait]
impl ScoresSource for ScoringLink {
    async fn scores(&self, caller: &Caller, profile: ProfileId) -> Result<ProfileScores, String> {
        let (scores, suggestions) = self.ask(caller, profile).await;
        let (Some(scores), suggestions) = (answer(scores)?, answer(suggestions)?) else {
            return Ok(ProfileScores::default());
        };
        Ok(profile_scores(
            scores,
            suggestions.map(|s| s.recommendations).unwrap_or_default(),
        ))
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Scoring's answers as the profile carries them (named in identity.proto, `Profile.scores`).
pub fn profile_scores(scores: pb::GetScoresResponse, suggestions: Vec<pb::Recommendation>) -> ProfileScores {
    let computed_at = scores.as_of;
    let mut out = Vec::new();
    let mut score = |name: &str, value: f64, label: String| {
        out.push(Score {
            name: name.to_owned(),
            value,
            computed_at,
            label,
        })
    };
    if let Some(rfm) = &scores.rfm {
        score("rfm_recency", rfm.recency.into(), String::new());
        score("rfm_frequency", rfm.frequency.into(), String::new());
        score("rfm_monetary", rfm.monetary.into(), String::new());
        let code = 100 * rfm.recency + 10 * rfm.frequency + rfm.monetary;
        score("rfm_cell", code.into(), rfm.cell.clone());
    }
    if let Some(clv) = &scores.lifetime_value {
        score("p_alive", clv.p_alive, String::new());
        score("expected_purchases", clv.expected_purchases, String::new());
        score("expected_spend", clv.expected_spend, String::new());
        score("clv", clv.clv, String::new());
    }
    if let Some(propensity) = &scores.propensity {
        score("propensity", propensity.probability, String::new());
        if let Some(risk) = propensity.churn_risk {
            score("churn_risk", risk, String::new());
        }
    }
    if let Some(segment) = &scores.segment {
        score("segment", segment.segment_id.into(), segment.name.clone());
    }
    if let Some(preference) = scores
        .channel_preference
        .as_ref()
        .filter(|p| !p.best_channel.is_empty())
    {
        let rate = preference
            .channels
            .iter()
            .find(|c| c.channel == preference.best_channel)
            .map_or(f64::NAN, |c| c.rate);
        score("preferred_channel", rate, preference.best_channel.clone());
    }
    if let Some(send_time) = &scores.send_time {
        let hour = send_time.hour_of_week;
        let label = format!("{} {:02}:00", DAYS[(hour / 24 % 7) as usize], hour % 24);
        score("best_send_time", hour.into(), label);
    }
    for suggestion in suggestions {
        let lift = suggestion.rule.as_ref().map_or(f64::NAN, |r| r.lift);
        score("suggested_product", lift, suggestion.product);
    }
    ProfileScores {
        scores: out,
        segments: scores.audiences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_becomes_its_named_scores() {
        let scores = pb::GetScoresResponse {
            rfm: Some(pb::Rfm {
                recency: 5,
                frequency: 4,
                monetary: 3,
                cell: "loyal_customers".to_owned(),
                ..Default::default()
            }),
            send_time: Some(pb::SendTime {
                hour_of_week: 24 + 18,
                ..Default::default()
            }),
            channel_preference: Some(pb::ChannelPreference {
                channels: vec![
                    pb::ChannelRate {
                        channel: "sms".to_owned(),
                        rate: 0.1,
                        ..Default::default()
                    },
                    pb::ChannelRate {
                        channel: "email".to_owned(),
                        rate: 0.3,
                        ..Default::default()
                    },
                ],
                best_channel: "email".to_owned(),
                ..Default::default()
            }),
            audiences: vec!["vip".to_owned()],
            ..Default::default()
        };
        let suggestion = pb::Recommendation {
            product: "whole milk".to_owned(),
            rule: Some(pb::AssociationRule {
                lift: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = profile_scores(scores, vec![suggestion]);
        let named: Vec<(&str, f64, &str)> = got
            .scores
            .iter()
            .map(|s| (s.name.as_str(), s.value, s.label.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("rfm_recency", 5.0, ""),
                ("rfm_frequency", 4.0, ""),
                ("rfm_monetary", 3.0, ""),
                ("rfm_cell", 543.0, "loyal_customers"),
                ("preferred_channel", 0.3, "email"),
                ("best_send_time", 42.0, "Tue 18:00"),
                ("suggested_product", 1.5, "whole milk"),
            ]
        );
        assert_eq!(got.segments, ["vip"]);
    }

    #[test]
    fn no_clear_best_channel_is_no_preferred_channel() {
        let scores = pb::GetScoresResponse {
            channel_preference: Some(pb::ChannelPreference::default()),
            ..Default::default()
        };
        assert!(profile_scores(scores, Vec::new()).scores.is_empty());
    }
}
