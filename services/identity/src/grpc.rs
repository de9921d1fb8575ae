//! gRPC handlers: check the role, parse, call the service, map the error. No SQL here.

use std::pin::Pin;

use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::identity::v1 as pb;
use corvus_proto::identity::v1::identity_service_server::IdentityService;
use futures::Stream;
use tonic::{Request, Response, Status};

use corvus_log::api::known_consumer;
use corvus_log::outbox::{Entry, EventSink};
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};

use crate::domain::resolution::ProfileId;
use crate::matching_job::Job;
use crate::read_model::{identifier_message, merge_message, timestamp};
use crate::service::{Caller, Identity, IdentityError, ProfileRead};
use crate::storage::{CANDIDATE_PENDING, CandidateRecord};

pub struct IdentityApi {
    pub identity: Identity,
}

impl From<IdentityError> for Status {
    fn from(err: IdentityError) -> Self {
        match err {
            IdentityError::Invalid { field, reason } => invalid_argument(field, reason),
            IdentityError::NotFound(message) => Status::not_found(message),
            IdentityError::Precondition(message) => Status::failed_precondition(message),
            IdentityError::Storage(e) => storage_status(e),
        }
    }
}

fn profile_id(field: &'static str, value: &str) -> Result<ProfileId, Status> {
    if value.is_empty() {
        return Err(invalid_argument(field, "required"));
    }
    value
        .parse()
        .map_err(|_| invalid_argument(field, "not a profile id (a UUID)"))
}

fn candidate_message(c: &CandidateRecord) -> pb::MatchCandidate {
    let levels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&c.levels).unwrap_or_default();
    pb::MatchCandidate {
        candidate_id: c.id.to_string(),
        profile_id_a: c.a.to_string(),
        profile_id_b: c.b.to_string(),
        probability: c.probability,
        levels: levels
            .into_iter()
            .map(|(k, v)| (k, v.as_u64().unwrap_or(0) as u32))
            .collect(),
        status: i32::from(c.status),
        proposed_at: timestamp(c.proposed_at),
    }
}

type MatchingStream = Pin<Box<dyn Stream<Item = Result<pb::RunMatchingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read profiles")?;
        let ws = &principal.workspace;
        // Scoring is asked as the caller, with their key: only when asked to.
        let caller = request.get_ref().include_scores.then(|| Caller {
            principal: principal.clone(),
            metadata: request.metadata().clone(),
        });
        let read = match &request.get_ref().lookup {
            Some(pb::get_profile_request::Lookup::ProfileId(id)) => {
                let id = profile_id("profile_id", id)?;
                self.identity
                    .profile(ws, id)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("no profile {id} in this workspace")))?
            }
            Some(pb::get_profile_request::Lookup::Identifier(raw)) => {
                let identifier = self.identity.identifier(ws, &raw.kind, &raw.value)?;
                self.identity
                    .profile_by_identifier(ws, &identifier)
                    .await?
                    .ok_or_else(|| {
                        Status::not_found(format!("no profile holds {} {:?}", identifier.kind, identifier.value))
                    })?
            }
            None => return Err(invalid_argument("lookup", "give a profile_id or an identifier")),
        };
        let ProfileRead {
            id,
            profile,
            redirected_from,
        } = read;
        let mut response =
            pb::GetProfileResponse::encoded(profile, redirected_from.map(|p| p.to_string()).unwrap_or_default());
        if let Some(caller) = caller {
            match self.identity.scores_of(&caller, id).await {
                Ok(scores) => response.add_scores(scores.scores, scores.segments),
                Err(why) => response.scores_unavailable = why,
            }
        }
        Ok(Response::new(response))
    }

    async fn list_merges(
        &self,
        request: Request<pb::ListMergesRequest>,
    ) -> Result<Response<pb::ListMergesResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read merges")?;
        let req = request.get_ref();
        let id = profile_id("profile_id", &req.profile_id)?;
        let (size, before) = page::<i64>(req.page.as_ref())?;
        let merges = self.identity.merges(&principal.workspace, id, before, size).await?;
        let last = merges.last().map(|m| m.id);
        Ok(Response::new(pb::ListMergesResponse {
            page: next_page(merges.len(), size, last),
            merges: merges.iter().map(merge_message).collect(),
        }))
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let principal = authorise(&request, Role::Read, "list profiles")?;
        let (size, after) = page::<ProfileId>(request.get_ref().page.as_ref())?;
        let ids = self.identity.profile_ids(&principal.workspace, after, size).await?;
        Ok(Response::new(pb::ListProfilesResponse {
            page: next_page(ids.len(), size, ids.last()),
            profile_ids: ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn unmerge(&self, request: Request<pb::UnmergeRequest>) -> Result<Response<pb::UnmergeResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "undo merges")?;
        let merge_id = &request.get_ref().merge_id;
        let merge = merge_id
            .parse::<i64>()
            .map_err(|_| invalid_argument("merge_id", "not a merge id (see ListMerges)"))?;
        let unmerged = self.identity.unmerge(&principal.workspace, merge).await?;
        Ok(Response::new(pb::UnmergeResponse {
            sides: unmerged
                .sides
                .iter()
                .map(|side| pb::UnmergedSide {
                    profile_id: side.profile.to_string(),
                    identifiers: side
                        .identifiers
                        .iter()
                        .map(|(i, first_seen)| identifier_message(i, Some(*first_seen)))
                        .collect(),
                    events: side.events,
                })
                .collect(),
        }))
    }

    async fn forget_profile(
        &self,
        request: Request<pb::ForgetProfileRequest>,
    ) -> Result<Response<pb::ForgetProfileResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "erase profiles")?;
        let req = request.get_ref();
        let id = profile_id("profile_id", &req.profile_id)?;
        let (receipt, already_erased) = self
            .identity
            .forget(&principal.workspace, id, req.allow_recreate)
            .await?;
        Ok(Response::new(pb::ForgetProfileResponse {
            receipt: Some(receipt),
            already_erased,
        }))
    }

    type RunMatchingStream = MatchingStream;

    async fn run_matching(
        &self,
        request: Request<pb::RunMatchingRequest>,
    ) -> Result<Response<Self::RunMatchingStream>, Status> {
        let principal = authorise(&request, Role::Admin, "run matching")?;
        let job = Job::from_request(request.get_ref())?;
        let identity = self.identity.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The job runs to the end even if the caller goes away: merges are not left half made.
        tokio::spawn(async move {
            let progress = |report| {
                let _ = tx.send(Ok(report));
            };
            if let Err(err) = job.run(&identity, &principal.workspace, progress).await {
                let _ = tx.send(Err(Status::from(err)));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn list_match_candidates(
        &self,
        request: Request<pb::ListMatchCandidatesRequest>,
    ) -> Result<Response<pb::ListMatchCandidatesResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read match candidates")?;
        let req = request.get_ref();
        let status = match pb::CandidateStatus::try_from(req.status) {
            Ok(pb::CandidateStatus::Unspecified) => CANDIDATE_PENDING,
            Ok(status) => status as i16,
            Err(_) => return Err(invalid_argument("status", "not a candidate status")),
        };
        let (size, after) = page::<String>(req.page.as_ref())?;
        let after = match after {
            None => None,
            Some(token) => Some(
                token
                    .split_once('/')
                    .and_then(|(p, id)| Some((p.parse::<f64>().ok()?, id.parse::<uuid::Uuid>().ok()?)))
                    .ok_or_else(|| invalid_argument("page.page_token", "not a token this server issued"))?,
            ),
        };
        let candidates = self
            .identity
            .store
            .candidates(&principal.workspace, status, after, size)
            .await
            .map_err(storage_status)?;
        let last = candidates.last().map(|c| format!("{}/{}", c.probability, c.id));
        Ok(Response::new(pb::ListMatchCandidatesResponse {
            page: next_page(candidates.len(), size, last),
            candidates: candidates.iter().map(candidate_message).collect(),
        }))
    }

    async fn review_match_candidate(
        &self,
        request: Request<pb::ReviewMatchCandidateRequest>,
    ) -> Result<Response<pb::ReviewMatchCandidateResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "review match candidates")?;
        let req = request.get_ref();
        let id = req
            .candidate_id
            .parse::<uuid::Uuid>()
            .map_err(|_| invalid_argument("candidate_id", "not a candidate id (a UUID)"))?;
        let (candidate, merge) = self.identity.review(&principal.workspace, id, req.accept).await?;
        Ok(Response::new(pb::ReviewMatchCandidateResponse {
            candidate: Some(candidate_message(&candidate)),
            merge,
        }))
    }

    async fn get_erasure_receipt(
        &self,
        request: Request<pb::GetErasureReceiptRequest>,
    ) -> Result<Response<pb::GetErasureReceiptResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "read erasure receipts")?;
        let id = profile_id("profile_id", &request.get_ref().profile_id)?;
        let receipt = self.identity.erasure_receipt(&principal.workspace, id).await?;
        Ok(Response::new(pb::GetErasureReceiptResponse { receipt: Some(receipt) }))
    }

    async fn list_consumers(
        &self,
        request: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read consumer status")?;
        let consumers = self
            .identity
            .handoff
            .consumers(&*self.identity.log, &principal.workspace)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ListConsumersResponse {
            consumers: consumers
                .into_iter()
                .map(|c| pb::ConsumerStatus {
                    name: c.name,
                    lag: c.lag,
                    dead_letters: c.dead_letters,
                    last_delivery_at: c.last_delivery_at.and_then(timestamp),
                    last_error: c.last_error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let principal = authorise(&request, Role::Read, "read dead letters")?;
        let req = request.get_ref();
        let (size, after) = page::<i64>(req.page.as_ref())?;
        let log = &*self.identity.log;
        let consumer = known_consumer(log, &self.identity.handoff, &principal.workspace, &req.consumer).await?;
        let dead = log
            .list_dead_letters(&principal.workspace, consumer, after.unwrap_or(0), size)
            .await
            .map_err(storage_status)?;
        let last = dead.last().map(|d| d.id);
        let dead_letters = dead
            .into_iter()
            .map(|d| {
                Ok(pb::DeadLetter {
                    id: d.id,
                    consumer: d.consumer,
                    entry: Some(pb::LogEntry::from_logged(&d.event)?),
                    reason: d.reason,
                    attempts: d.attempts,
                    failed_at: timestamp(d.failed_at),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| Status::internal(format!("in identity's log: {e}")))?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            page: next_page(dead_letters.len(), size, last),
            dead_letters,
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let principal = authorise(&request, Role::Admin, "replay dead letters")?;
        let req = request.get_ref();
        let log = &*self.identity.log;
        let consumer = known_consumer(log, &self.identity.handoff, &principal.workspace, &req.consumer).await?;
        let replayed = log
            .request_replay(&principal.workspace, &req.ids, consumer)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            replayed: replayed as u32,
        }))
    }
}

/// Identity as a consumer of ingestion's event log over gRPC, when the two run apart:
/// each delivery resolved, the events it could not read named.
pub struct ResolvingConsumer {
    pub identity: Identity,
}

#[tonic::async_trait]
impl EventConsumerService for ResolvingConsumer {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        authorise(&request, Role::Service, "deliver a log's entries")?;
        let request = request.into_inner();
        if !request.entries.is_empty() {
            return Err(invalid_argument(
                "entries",
                "identity consumes ingestion's event log (events), not its own",
            ));
        }
        let failures = EventSink::deliver(&self.identity, &request.events)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(DeliverResponse {
            erasures: Vec::new(),
            failures: failures
                .into_iter()
                .map(|f| DeliveryFailure {
                    event_id: f.event_id,
                    reason: f.reason,
                })
                .collect(),
        }))
    }
}
