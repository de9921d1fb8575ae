//! Deliveries balanced over every address a consumer's host name resolves to. The DNS
//! name of a headless Service resolves to each ready pod; one HTTP/2 connection per
//! address, each delivery to one of them (the least loaded of two picked at random), and
//! the name looked up again every [`EVERY`] so that pods come and go. A delivery that
//! fails is retried by the outbox, to whichever pod is picked then: deliveries are safe
//! to repeat (consumers are idempotent by entry id), which is why only they are retried.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often the name is looked up again.
pub const EVERY: Duration = Duration::from_secs(10);

/// Looks a host and port up: the system's resolver, or one a test gives.
pub type Resolve = Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system's resolver (DNS in a cluster).
pub fn system() -> Resolve {
    Arc::new(|host, port| async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) }.boxed())
}

/// A channel over every address `resolve` gives for `host:port`, each connection made
/// as `configure` sets it up, kept up to date every `every` for as long as the channel
/// is in use.
pub fn balanced(
    host: String,
    port: u16,
    resolve: Resolve,
    every: Duration,
    configure: impl Fn(Endpoint) -> Endpoint + Send + 'static,
) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        loop {
            match resolve(host.clone(), port).await {
                // None found keeps what there was: a stale address fails fast and the
                // outbox retries, where an empty set would leave a delivery waiting.
                Ok(found) if !found.is_empty() => {
                    let found: HashSet<SocketAddr> = found.into_iter().collect();
                    for addr in found.difference(&current) {
                        let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) else {
                            continue;
                        };
                        if changes.send(Change::Insert(*addr, configure(endpoint))).await.is_err() {
                            return;
                        }
                    }
                    for addr in current.difference(&found) {
                        if changes.send(Change::Remove(*addr)).await.is_err() {
                            return;
                        }
                    }
                    current = found;
                }
                Ok(_) => tracing::debug!(host, "consumer host resolved to nothing; keeping its addresses"),
                Err(err) => tracing::debug!(host, error = %err, "consumer host did not resolve; keeping its addresses"),
            }
            tokio::time::sleep(every).await;
            if changes.is_closed() {
                return;
            }
        }
    });
    channel
}
