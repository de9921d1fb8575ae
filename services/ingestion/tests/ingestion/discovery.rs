//! A consumer named by host is delivered to over every address the name resolves to
//! (the pods of a headless Service), and follows the name as addresses come and go.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corvus_ingestion::outbox::discovery::Resolve;
use corvus_ingestion::outbox::{ConsumerConfig, EventSink, GrpcSink};
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::ingestion::v1::event_consumer_service_server::{EventConsumerService, EventConsumerServiceServer};
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse};
use futures::FutureExt;
use tonic::{Request, Response, Status};

/// A pod: counts the deliveries it took.
#[derive(Clone, Default)]
struct Pod(Arc<AtomicUsize>);

#[tonic::async_trait]
impl EventConsumerService for Pod {
    async fn deliver(&self, _: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(DeliverResponse::default()))
    }
}

async fn serve(ip: &str) -> (Pod, SocketAddr) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pod = Pod::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EventConsumerServiceServer::new(pod.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (pod, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_by_name_is_balanced_over_its_addresses() {
    // Two pods on two loopback addresses, behind one name the test resolves.
    let (a, a_addr) = serve("127.0.0.1").await;
    let (b, b_addr) = serve("127.0.0.2").await;
    let addresses = Arc::new(Mutex::new(vec![a_addr, b_addr]));
    let resolve: Resolve = {
        let addresses = addresses.clone();
        Arc::new(move |host, _port| {
            assert_eq!(host, "consumer.corvus.svc");
            let found = addresses.lock().unwrap().clone();
            async move { Ok(found) }.boxed()
        })
    };
    let config = ConsumerConfig::new("spread", "http://consumer.corvus.svc:50051");
    let sink = GrpcSink::with_resolver(&config, resolve, Duration::from_millis(50)).unwrap();
    let event = [StoredEvent::default()];
    for _ in 0..40 {
        EventSink::<StoredEvent>::deliver(&sink, &event).await.unwrap();
    }
    let (to_a, to_b) = (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst));
    assert_eq!(to_a + to_b, 40);
    assert!(to_a > 0 && to_b > 0, "every pod takes deliveries: {to_a} and {to_b}");

    // A pod goes away: the name stops giving it, and deliveries stop going to it.
    addresses.lock().unwrap().retain(|addr| *addr == a_addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst));
    for _ in 0..20 {
        EventSink::<StoredEvent>::deliver(&sink, &event).await.unwrap();
    }
    assert_eq!(a.0.load(Ordering::SeqCst), before.0 + 20);
    assert_eq!(b.0.load(Ordering::SeqCst), before.1);
}
