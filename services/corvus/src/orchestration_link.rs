//! Where orchestration meets identity, scoring, ingestion and measurement: the person
//! Decide decides for (identity's GetProfile with scores), what a campaign may target
//! (scoring's audiences and segments), where sends' outcomes go (ingestion), and the
//! figures satisfaction rules watch (measurement), asked in this process or over gRPC
//! with the caller's key.

use async_trait::async_trait;
use chrono::NaiveDate;
use corvus_identity::Identity;
use corvus_identity::grpc::IdentityApi;
use corvus_ingestion::Ingestion;
use corvus_ingestion::grpc::IngestionApi;
use corvus_measurement::Measurement;
use corvus_measurement::grpc::MeasurementApi;
use corvus_orchestration::delivery::Receipts;
use corvus_orchestration::domain::alert::{Feedback, Span};
use corvus_orchestration::people::{AudienceChange, Caller, Changes, Directory, Person, Targets, Who};
use corvus_orchestration::satisfaction::MeasurementSource;
use corvus_proto::ProfileId;
use corvus_proto::common::v1::Event;
use corvus_proto::common::v1::{Identifier, PageRequest};
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::identity_service_server::IdentityService;
use corvus_proto::identity::v1::{GetProfileRequest, ListProfilesRequest, get_profile_request};
use corvus_proto::ingestion::v1::IngestRequest;
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::ingestion_service_server::IngestionService;
use corvus_proto::measurement::v1 as mpb;
use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;
use corvus_proto::measurement::v1::measurement_service_server::MeasurementService;
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use corvus_proto::scoring::v1::scoring_service_server::ScoringService;
use corvus_scoring::Scoring;
use corvus_scoring::grpc::ScoringApi;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::scores_link::{as_caller, as_principal};

pub struct People {
    identity: IdentityLink,
    scoring: ScoringLink,
}

enum IdentityLink {
    Local(IdentityApi),
    Remote(IdentityServiceClient<Channel>),
    Missing,
}

enum ScoringLink {
    Local(ScoringApi),
    Remote(ScoringServiceClient<Channel>),
    Missing,
}

/// Connects when first asked, and again whenever the connection is lost.
fn lazy(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?.connect_lazy())
}

impl People {
    /// Identity and scoring in this process where they run here, else at their
    /// endpoints; a service with neither answers UNAVAILABLE, saying which setting is
    /// missing.
    pub fn new(
        identity: Option<&Identity>,
        identity_endpoint: Option<&str>,
        scoring: Option<&Scoring>,
        scoring_endpoint: Option<&str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            identity: match (identity, identity_endpoint) {
                (Some(identity), _) => IdentityLink::Local(IdentityApi {
                    identity: identity.clone(),
                }),
                (None, Some(endpoint)) => IdentityLink::Remote(IdentityServiceClient::new(lazy(endpoint)?)),
                (None, None) => IdentityLink::Missing,
            },
            scoring: match (scoring, scoring_endpoint) {
                (Some(scoring), _) => ScoringLink::Local(ScoringApi {
                    scoring: scoring.clone(),
                }),
                (None, Some(endpoint)) => ScoringLink::Remote(ScoringServiceClient::new(lazy(endpoint)?)),
                (None, None) => ScoringLink::Missing,
            },
        })
    }
}

/// An answer, `None` for NOT_FOUND, or why the service could not answer.
fn answer<T>(service: &str, result: Result<Response<T>, Status>) -> Result<Option<T>, String> {
    match result {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(format!("{service} answered {:?}: {}", status.code(), status.message())),
    }
}

#[async_trait]
impl Directory for People {
    async fn person(&self, caller: &Caller, who: &Who) -> Result<Option<Person>, String> {
        let request = GetProfileRequest {
            lookup: Some(match who {
                Who::Profile(id) => get_profile_request::Lookup::ProfileId(id.to_string()),
                Who::Identifier { kind, value } => get_profile_request::Lookup::Identifier(Identifier {
                    kind: kind.clone(),
                    value: value.clone(),
                }),
            }),
            include_scores: true,
        };
        let answered = match &self.identity {
            IdentityLink::Local(api) => api.get_profile(as_principal(&caller.principal, request)).await,
            IdentityLink::Remote(client) => client.clone().get_profile(as_caller(&caller.metadata, request)).await,
            IdentityLink::Missing => {
                return Err("orchestration has no identity to ask: set orchestration.identity_endpoint".to_owned());
            }
        };
        let Some(response) = answer("identity", answered)? else {
            return Ok(None);
        };
        let profile = response.to_profile().map_err(|e| format!("identity's profile: {e}"))?;
        Ok(profile.as_ref().map(Person::from_profile))
    }

    async fn targets(&self, caller: &Caller) -> Result<Targets, String> {
        let (audiences, segments) = match &self.scoring {
            ScoringLink::Local(api) => tokio::join!(
                api.list_audiences(as_principal(&caller.principal, pb::ListAudiencesRequest {})),
                api.list_segments(as_principal(&caller.principal, pb::ListSegmentsRequest::default()))
            ),
            ScoringLink::Remote(client) => {
                let (mut a, mut b) = (client.clone(), client.clone());
                tokio::join!(
                    a.list_audiences(as_caller(&caller.metadata, pb::ListAudiencesRequest {})),
                    b.list_segments(as_caller(&caller.metadata, pb::ListSegmentsRequest::default()))
                )
            }
            ScoringLink::Missing => {
                return Err("orchestration has no scoring to ask: set orchestration.scoring_endpoint".to_owned());
            }
        };
        Ok(Targets {
            audiences: answer("scoring", audiences)?
                .map(|a| a.audiences.into_iter().map(|a| a.name).collect())
                .unwrap_or_default(),
            segments: answer("scoring", segments)?.map(|s| s.segments.into_iter().map(|s| s.name).collect()),
        })
    }

    async fn members(&self, caller: &Caller, audience: &str) -> Result<Option<Vec<ProfileId>>, String> {
        let mut members = Vec::new();
        let mut token = String::new();
        loop {
            let request = pb::ListAudienceMembersRequest {
                name: audience.to_owned(),
                page: Some(PageRequest {
                    page_size: 1_000,
                    page_token: token.clone(),
                }),
            };
            let answered = match &self.scoring {
                ScoringLink::Local(api) => {
                    api.list_audience_members(as_principal(&caller.principal, request))
                        .await
                }
                ScoringLink::Remote(client) => {
                    client
                        .clone()
                        .list_audience_members(as_caller(&caller.metadata, request))
                        .await
                }
                ScoringLink::Missing => {
                    return Err("orchestration has no scoring to ask: set orchestration.scoring_endpoint".to_owned());
                }
            };
            let Some(page) = answer("scoring", answered)? else {
                return Ok(None);
            };
            members.extend(
                page.members
                    .iter()
                    .filter_map(|m| m.profile_id.parse::<ProfileId>().ok()),
            );
            token = page.page.map(|p| p.next_page_token).unwrap_or_default();
            if token.is_empty() {
                return Ok(Some(members));
            }
        }
    }

    async fn population(&self, caller: &Caller) -> Result<Vec<ProfileId>, String> {
        let mut everyone = Vec::new();
        let mut token = String::new();
        loop {
            let request = ListProfilesRequest {
                page: Some(PageRequest {
                    page_size: 1_000,
                    page_token: token.clone(),
                }),
            };
            let answered = match &self.identity {
                IdentityLink::Local(api) => api.list_profiles(as_principal(&caller.principal, request)).await,
                IdentityLink::Remote(client) => {
                    client.clone().list_profiles(as_caller(&caller.metadata, request)).await
                }
                IdentityLink::Missing => {
                    return Err("orchestration has no identity to ask: set orchestration.identity_endpoint".to_owned());
                }
            };
            let page = answer("identity", answered)?.unwrap_or_default();
            everyone.extend(page.profile_ids.iter().filter_map(|id| id.parse::<ProfileId>().ok()));
            token = page.page.map(|p| p.next_page_token).unwrap_or_default();
            if token.is_empty() {
                return Ok(everyone);
            }
        }
    }

    async fn audience_changes(&self, caller: &Caller, audience: &str, after: Option<u64>) -> Result<Changes, String> {
        use futures::StreamExt as _;
        let request = pb::StreamAudienceChangesRequest {
            name: audience.to_owned(),
            after_sequence: after,
        };
        let failed = |status: Status| format!("scoring answered {:?}: {}", status.code(), status.message());
        let changes: futures::stream::BoxStream<'static, Result<pb::StreamAudienceChangesResponse, Status>> =
            match &self.scoring {
                ScoringLink::Local(api) => api
                    .stream_audience_changes(as_principal(&caller.principal, request))
                    .await
                    .map_err(failed)?
                    .into_inner(),
                ScoringLink::Remote(client) => client
                    .clone()
                    .stream_audience_changes(as_caller(&caller.metadata, request))
                    .await
                    .map_err(failed)?
                    .into_inner()
                    .boxed(),
                ScoringLink::Missing => {
                    return Err("orchestration has no scoring to ask: set orchestration.scoring_endpoint".to_owned());
                }
            };
        Ok(changes
            .map(move |change| {
                let change = change.map_err(failed)?;
                Ok(AudienceChange {
                    sequence: change.sequence,
                    profile: change
                        .profile_id
                        .parse()
                        .map_err(|_| format!("scoring sent a profile id that is not one: {:?}", change.profile_id))?,
                    entered: change.entered,
                })
            })
            .boxed())
    }
}

/// Where sends' outcomes go back in: ingestion in this process, or at its endpoint (as
/// the service, naming the workspace).
pub enum ReceiptLink {
    Local(IngestionApi),
    Remote(IngestionServiceClient<Channel>),
}

impl ReceiptLink {
    pub fn new(ingestion: Option<&Ingestion>, endpoint: Option<&str>) -> anyhow::Result<Option<Self>> {
        Ok(match (ingestion, endpoint) {
            (Some(ingestion), _) => Some(Self::Local(IngestionApi {
                ingestor: ingestion.ingestor.clone(),
                log: ingestion.log.clone(),
            })),
            (None, Some(endpoint)) => Some(Self::Remote(IngestionServiceClient::new(lazy(endpoint)?))),
            (None, None) => None,
        })
    }
}

#[async_trait]
impl Receipts for ReceiptLink {
    async fn ingest(&self, caller: &Caller, events: Vec<Event>) -> Result<(), String> {
        let request = IngestRequest { events, sent_at: None };
        let answered = match self {
            Self::Local(api) => api.ingest(as_principal(&caller.principal, request)).await,
            Self::Remote(client) => client.clone().ingest(as_caller(&caller.metadata, request)).await,
        };
        let response = answered
            .map_err(|s| format!("ingestion answered {:?}: {}", s.code(), s.message()))?
            .into_inner();
        match response.rejected {
            0 => Ok(()),
            n => Err(format!("ingestion rejected {n} report(s): {:?}", response.statuses)),
        }
    }
}

/// Where satisfaction rules read NPS, CSAT and mentions: measurement's
/// `GetSatisfaction`, in this process or at its endpoint, as the service.
pub enum FeedbackLink {
    Local(MeasurementApi),
    Remote(MeasurementServiceClient<Channel>),
}

impl FeedbackLink {
    pub fn new(measurement: Option<&Measurement>, endpoint: Option<&str>) -> anyhow::Result<Option<Self>> {
        Ok(match (measurement, endpoint) {
            (Some(measurement), _) => Some(Self::Local(MeasurementApi {
                measurement: measurement.clone(),
            })),
            (None, Some(endpoint)) => Some(Self::Remote(MeasurementServiceClient::new(lazy(endpoint)?))),
            (None, None) => None,
        })
    }
}

#[async_trait]
impl MeasurementSource for FeedbackLink {
    async fn span(&self, caller: &Caller, feedback: Feedback, from: NaiveDate, to: NaiveDate) -> Result<Span, String> {
        let request = mpb::GetSatisfactionRequest {
            kind: match feedback {
                Feedback::Nps => mpb::FeedbackKind::Nps,
                Feedback::Csat => mpb::FeedbackKind::Csat,
                Feedback::Mentions => mpb::FeedbackKind::Mentions,
            } as i32,
            from_day: from.to_string(),
            to_day: to.to_string(),
            alpha: 0.05,
            ..Default::default()
        };
        let answered = match self {
            Self::Local(api) => api.get_satisfaction(as_principal(&caller.principal, request)).await,
            Self::Remote(client) => {
                client
                    .clone()
                    .get_satisfaction(as_caller(&caller.metadata, request))
                    .await
            }
        };
        let overall = answered
            .map_err(|s| format!("measurement answered {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .overall
            .unwrap_or_default();
        Ok(Span {
            responses: overall.responses,
            score: overall.score,
            stderr: overall.stderr,
        })
    }

    async fn estimate(
        &self,
        caller: &Caller,
        request: mpb::EstimatePolicyValueRequest,
    ) -> Result<mpb::EstimatePolicyValueResponse, String> {
        let answered = match self {
            Self::Local(api) => {
                api.estimate_policy_value(as_principal(&caller.principal, request))
                    .await
            }
            Self::Remote(client) => {
                client
                    .clone()
                    .estimate_policy_value(as_caller(&caller.metadata, request))
                    .await
            }
        };
        answered
            .map(|r| r.into_inner())
            .map_err(|s| format!("measurement answered {:?}: {}", s.code(), s.message()))
    }
}
