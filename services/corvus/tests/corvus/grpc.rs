//! The gRPC ingestion API: exact statuses, streams, keys, roles, workspaces, bad input.

use std::time::Duration;

use corvus_proto::common::v1::{EventType, Identifier};
use corvus_proto::ingestion::v1::{
    EventStatusCode, IngestStreamRequest, ListDeadLettersRequest, ReplayDeadLettersRequest,
};
use corvus_test_support::{Backend, on_both_backends};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{batch, eventually, message_ids, spawn, spawn_with, track};

on_both_backends!(
    every_event_gets_its_exact_status,
    a_stream_acks_each_batch_in_order,
    keys_and_roles_are_enforced,
    workspaces_never_see_each_other,
    bad_batches_are_refused_whole_and_store_nothing,
    the_quota_refuses_with_a_retry_hint,
    accepted_events_reach_the_consumers,
    the_trace_context_travels_with_the_event,
);

async fn every_event_gets_its_exact_status(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = app.client(&app.ingest_key).await;
    let mut far_future = track("m-6");
    far_future.timestamp = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 7 * 86_400,
        nanos: 0,
    });
    let mut blocked = track("m-2");
    blocked.anonymous_id = "null".into();
    let mut unknown = track("m-3");
    unknown.r#type = 99;
    let mut bad_kind = track("m-7");
    bad_kind.identifiers.push(Identifier {
        kind: "E-Mail".into(),
        value: "a@example.com".into(),
    });
    let mut good_identify = track("m-8");
    good_identify.r#type = EventType::Identify as i32;
    good_identify.identifiers.push(Identifier {
        kind: "email".into(),
        value: "ada@example.com".into(),
    });
    let events = vec![
        track("m-1"),
        blocked,
        unknown,
        track("m-1"),
        track(""),
        far_future,
        bad_kind,
        good_identify,
    ];
    let res = client.ingest(batch(events)).await.unwrap().into_inner();
    let codes: Vec<_> = res.statuses.iter().map(|s| (s.code(), s.field.as_str())).collect();
    use EventStatusCode::*;
    assert_eq!(
        codes,
        [
            (Accepted, ""),
            (Rejected, "events[1].anonymous_id"),
            (Rejected, "events[2].type"),
            (Duplicate, ""),
            (Rejected, "events[4].message_id"),
            (Rejected, "events[5].timestamp"),
            (Rejected, "events[6].identifiers[0].kind"),
            (Accepted, ""),
        ]
    );
    assert_eq!((res.accepted, res.duplicates, res.rejected), (2, 1, 5));
    assert_eq!(
        res.statuses[3].event_id, res.statuses[0].event_id,
        "a repeat names the stored event"
    );
    assert_eq!(res.statuses[1].reason, "blocked identifier value");

    // Sent again, the event is a duplicate of the stored one and is not stored twice.
    let again = client.ingest(batch(vec![track("m-1")])).await.unwrap().into_inner();
    assert_eq!(again.statuses[0].code(), Duplicate);
    assert_eq!(again.statuses[0].event_id, res.statuses[0].event_id);
    let stored = app.stored(&app.read_key).await;
    assert_eq!(message_ids(&stored), ["m-1", "m-8"]);
    let event = stored[0].event.as_ref().unwrap();
    assert!(event.received_at.is_some() && event.timestamp.is_some());
    assert_eq!(stored[0].event_id, res.statuses[0].event_id);
    app.stop().await;
}

async fn a_stream_acks_each_batch_in_order(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = app.client(&app.ingest_key).await;
    let requests: Vec<_> = (0..5u64)
        .map(|b| IngestStreamRequest {
            batch_id: 100 + b,
            batch: Some(batch((0..50).map(|i| track(&format!("s-{b}-{i}"))).collect())),
        })
        .collect();
    let mut acks = client
        .ingest_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        seen.push((ack.batch_id, ack.result.unwrap().accepted));
    }
    assert_eq!(seen, [(100, 50), (101, 50), (102, 50), (103, 50), (104, 50)]);
    assert_eq!(app.stored(&app.read_key).await.len(), 250);
    app.stop().await;
}

async fn keys_and_roles_are_enforced(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let ingest = |client: &mut crate::support::Client| {
        let mut client = client.clone();
        async move { client.ingest(batch(vec![track("m-1")])).await }
    };
    let no_key = ingest(&mut app.client_as(None, None).await).await.unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated);
    let bogus = ingest(&mut app.client("cvs_0000").await).await.unwrap_err();
    assert_eq!(bogus.code(), Code::Unauthenticated);
    let read_only = ingest(&mut app.client(&app.read_key).await).await.unwrap_err();
    assert_eq!(read_only.code(), Code::PermissionDenied);
    // A key used for a workspace other than its own.
    let elsewhere = ingest(&mut app.client_as(Some(&app.ingest_key), Some("globex")).await)
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied);

    let mut ingest_only = app.client(&app.ingest_key).await;
    let denied = ingest_only
        .list_events(corvus_proto::ingestion::v1::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = ingest_only
        .replay_dead_letters(ReplayDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = app
        .client(&app.read_key)
        .await
        .replay_dead_letters(ReplayDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "replay needs admin");

    assert!(
        app.stored(&app.admin_key).await.is_empty(),
        "nothing refused was stored"
    );
    // The right workspace named explicitly is fine.
    ingest(&mut app.client_as(Some(&app.ingest_key), Some("acme")).await)
        .await
        .unwrap();
    assert_eq!(app.stored(&app.admin_key).await.len(), 1);
    app.stop().await;
}

async fn workspaces_never_see_each_other(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut acme = app.client(&app.admin_key).await;
    let mut globex = app.client(&app.other_key).await;
    acme.ingest(batch(vec![track("m-1"), track("m-2")])).await.unwrap();
    assert!(app.stored(&app.other_key).await.is_empty());
    // The same message id in another workspace is another event, not a duplicate.
    let res = globex.ingest(batch(vec![track("m-1")])).await.unwrap().into_inner();
    assert_eq!(res.statuses[0].code(), EventStatusCode::Accepted);
    assert_eq!(app.stored(&app.admin_key).await.len(), 2);
    assert_eq!(app.stored(&app.other_key).await.len(), 1);
    let dead = globex
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap();
    assert!(dead.into_inner().dead_letters.is_empty());
    let replayed = globex
        .replay_dead_letters(ReplayDeadLettersRequest {
            ids: vec![1, 2, 3],
            consumer: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(replayed.into_inner().replayed, 0);
    app.stop().await;
}

async fn bad_batches_are_refused_whole_and_store_nothing(backend: Backend) {
    let Some(app) = spawn_with(backend, |c| c.ingestion.max_batch_bytes = 64 * 1024).await else {
        return;
    };
    let mut client = app.client(&app.ingest_key).await;

    let empty = client.ingest(batch(Vec::new())).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let details = empty.get_error_details();
    assert_eq!(details.bad_request().unwrap().field_violations[0].field, "events");

    let mut big = Vec::new();
    for i in 0..20 {
        let mut e = track(&format!("big-{i}"));
        e.event = "x".repeat(5000);
        big.push(e);
    }
    let oversized = client.ingest(batch(big)).await.unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");

    // Bytes that are not a protobuf IngestRequest.
    let mut raw = tonic::client::Grpc::new(app.channel().await);
    raw.ready().await.unwrap();
    let mut request = tonic::Request::new(vec![0xff_u8, 0xff, 0xff, 0x07, 0x01]);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", app.ingest_key).parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/corvus.ingestion.v1.IngestionService/Ingest");
    let malformed = raw.unary::<_, Vec<u8>, _>(request, path, RawCodec).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().contains("malformed protobuf"),
        "{}",
        malformed.message()
    );

    let bad_token = app
        .client(&app.read_key)
        .await
        .list_events(corvus_proto::ingestion::v1::ListEventsRequest {
            page: Some(corvus_proto::common::v1::PageRequest {
                page_size: 10,
                page_token: "nope".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(app.stored(&app.read_key).await.is_empty());
    app.stop().await;
}

async fn the_quota_refuses_with_a_retry_hint(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // A workspace limited to 100 events a second.
    let key = app.key_with_quota("tiny", 100).await;
    let mut client = app.client(&key).await;

    // Both batches must fall in one one-second window; on a loaded machine the second
    // may slip into the next window, and then the round is tried again.
    let mut stored = 0;
    for round in 0..5 {
        let ms = chrono::Utc::now().timestamp_subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms) + 5)).await;
        let ids = |range: std::ops::Range<i32>| range.map(|i| track(&format!("q-{round}-{i}"))).collect();
        let first = client.ingest(batch(ids(0..80))).await.unwrap().into_inner();
        assert_eq!(first.accepted, 80);
        stored += 80;
        match client.ingest(batch(ids(80..160))).await {
            Ok(_) => stored += 80,
            Err(refused) => {
                assert_eq!(refused.code(), Code::ResourceExhausted);
                let retry = refused.get_error_details().retry_info().cloned().expect("retry info");
                assert!(retry.retry_delay.unwrap() <= Duration::from_secs(1));
                assert_eq!(
                    app.stored(&key).await.len(),
                    stored,
                    "nothing of the refused batch was stored"
                );
                app.stop().await;
                return;
            }
        }
    }
    panic!("the quota never refused a batch");
}

async fn accepted_events_reach_the_consumers(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let mut client = app.client(&app.admin_key).await;
    let res = client
        .ingest(batch((0..30).map(|i| track(&format!("c-{i}"))).collect()))
        .await
        .unwrap()
        .into_inner();
    let recorder = app.recorder.clone();
    assert!(
        eventually(Duration::from_secs(10), || recorder.received.lock().unwrap().len()
            == 30)
        .await
    );
    let received = recorder.received.lock().unwrap().clone();
    let expected: Vec<String> = (0..30).map(|i| format!("c-{i}")).collect();
    assert_eq!(message_ids(&received), expected);
    assert_eq!(received[0].event_id, res.statuses[0].event_id);
    assert_eq!(received[0].workspace_id, "acme");

    // The cursor moves once the delivery returns, a moment after the consumer has them.
    let consumers = app.caught_up(&app.read_key).await;
    let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["identity", "recorder"]);
    app.stop().await;
}

/// Sends raw bytes as a gRPC message, to test what the server makes of malformed input.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn the_trace_context_travels_with_the_event(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(batch(vec![track("t-1")]));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    app.client(&app.ingest_key).await.ingest(request).await.unwrap();

    let recorder = app.recorder.clone();
    assert!(eventually(Duration::from_secs(10), || recorder.received.lock().unwrap().len() == 1).await);
    let delivered = recorder.received.lock().unwrap()[0].traceparent.clone();
    assert_eq!(delivered.split('-').nth(1), Some(trace_id), "{delivered}");
    let stored = app.stored(&app.read_key).await;
    assert_eq!(stored[0].traceparent, delivered);
    app.stop().await;
}

/// A consumer that is a separate gRPC service, as identity will be.
#[derive(Default, Clone)]
struct RemoteConsumer {
    received: std::sync::Arc<std::sync::Mutex<Vec<(corvus_proto::common::v1::StoredEvent, String)>>>,
}

#[tonic::async_trait]
impl corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService for RemoteConsumer {
    async fn deliver(
        &self,
        request: tonic::Request<corvus_proto::ingestion::v1::DeliverRequest>,
    ) -> Result<tonic::Response<corvus_proto::ingestion::v1::DeliverResponse>, tonic::Status> {
        // The trace context the delivery call carried in its metadata.
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut received = self.received.lock().unwrap();
        for event in request.into_inner().events {
            received.push((event, traceparent.clone()));
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_consumer_gets_events_and_the_trace_over_grpc() {
    use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerServiceServer;
    let consumer = RemoteConsumer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .layer(corvus_platform::telemetry::TraceContextLayer)
        .add_service(EventConsumerServiceServer::new(consumer.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let Some(app) = spawn_with(Backend::Embedded, |c| {
        c.ingestion
            .consumers
            .push(corvus_ingestion::outbox::ConsumerConfig::new("remote", &endpoint));
    })
    .await
    else {
        return;
    };
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(batch((0..5).map(|i| track(&format!("r-{i}"))).collect()));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01").parse().unwrap(),
    );
    app.client(&app.ingest_key).await.ingest(request).await.unwrap();

    let received = consumer.received.clone();
    assert!(eventually(Duration::from_secs(10), || received.lock().unwrap().len() == 5).await);
    let received = received.lock().unwrap().clone();
    let ids: Vec<_> = received
        .iter()
        .map(|(e, _)| e.event.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(ids, ["r-0", "r-1", "r-2", "r-3", "r-4"]);
    // Ingestion → outbox → consumer: the trace of the original request spans the hop.
    assert_eq!(received[0].1.split('-').nth(1), Some(trace_id), "{}", received[0].1);
    app.stop().await;
    server.abort();
}
