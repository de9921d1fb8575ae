//! Decisions written together. Concurrent Decide calls hand their requests to a few
//! writers; each takes every request waiting (up to a bound) and records them in one
//! transaction, so that one commit, one flush of the WAL and a handful of statements
//! serve them all. While one writer's batch commits, the next gathers.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::storage::{DecideRequest, OrchestrationStore, Recorded};
use corvus_storage::StorageError;

/// Writers at once in this process.
const WRITERS: usize = 2;
/// Decisions a batch holds at most.
const BATCH: usize = 64;

struct Job {
    request: DecideRequest,
    answer: oneshot::Sender<Result<Recorded, StorageError>>,
}

type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Job>>>;

pub(crate) struct Decider {
    store: Arc<dyn OrchestrationStore>,
    /// Started with the first decision, in its runtime.
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Decider {
    pub(crate) fn new(store: Arc<dyn OrchestrationStore>) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Records the decision with those waiting beside it; its outcome.
    pub(crate) async fn decide(&self, request: DecideRequest) -> Result<Recorded, StorageError> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let receiver: Queue = Arc::new(Mutex::new(receiver));
            for _ in 0..WRITERS {
                tokio::spawn(write(self.store.clone(), receiver.clone()));
            }
            sender
        });
        let (answer, answered) = oneshot::channel();
        queue
            .send(Job { request, answer })
            .map_err(|_| StorageError::Internal("the decision writers have stopped".to_owned()))?;
        answered
            .await
            .map_err(|_| StorageError::Internal("the decision's writer stopped before answering".to_owned()))?
    }
}

async fn write(store: Arc<dyn OrchestrationStore>, queue: Queue) {
    loop {
        let jobs = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        // A caller that has gone (its call cancelled) before its batch began is not
        // decided for: nothing is sent that no one was told of.
        let (requests, answers): (Vec<DecideRequest>, Vec<_>) = jobs
            .into_iter()
            .filter(|job| !job.answer.is_closed())
            .map(|job| (job.request, job.answer))
            .unzip();
        if requests.is_empty() {
            continue;
        }
        metrics::histogram!("corvus_orchestration_decision_batch_size").record(requests.len() as f64);
        match store.decide(&requests).await {
            Ok(recorded) => {
                for (answer, recorded) in answers.into_iter().zip(recorded) {
                    let _ = answer.send(Ok(recorded));
                }
            }
            Err(err) if requests.len() == 1 => {
                let _ = answers.into_iter().next().expect("one").send(Err(err));
            }
            // Each on its own, so that what failed the batch fails only its own call.
            Err(_) => {
                for (request, answer) in requests.iter().zip(answers) {
                    let recorded = store
                        .decide(std::slice::from_ref(request))
                        .await
                        .map(|mut one| one.remove(0));
                    let _ = answer.send(recorded);
                }
            }
        }
    }
}
