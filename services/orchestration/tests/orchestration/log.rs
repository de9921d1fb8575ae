//! Orchestration's log of decisions on both backends: each decision handed on once, in
//! order, with what measurement needs; the policy's trials counted once however often
//! they are delivered; an erasure takes the person's entries out of the log.

use corvus_log::outbox::{EventSink, Failure};
use corvus_orchestration::log::{POLICY_CONSUMER, Policy};
use corvus_proto::orchestration::v1::DecisionLogEntry;

use super::*;

/// A consumer that keeps what it is handed.
#[derive(Default)]
struct Recorder {
    seen: std::sync::Mutex<Vec<DecisionLogEntry>>,
}

#[async_trait]
impl EventSink<DecisionLogEntry> for Recorder {
    async fn deliver(&self, entries: &[DecisionLogEntry]) -> Result<Vec<Failure>, String> {
        self.seen.lock().unwrap().extend_from_slice(entries);
        Ok(Vec::new())
    }
}

/// Waits until every consumer of the replica's log has taken every decision. The
/// policy's consumer, which every log has, must be among them: a consumer is listed
/// only once it has started, perhaps after the others have caught up.
pub async fn settled(o: &Orchestration) {
    let log = o.store.log();
    for _ in 0..200 {
        let consumers = log.consumers(&ws()).await.unwrap();
        if consumers.iter().any(|c| c.name == POLICY_CONSUMER) && consumers.iter().all(|c| c.lag == 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the decision log's consumers did not catch up");
}

pub async fn decisions_are_handed_on_once_in_order_and_erased(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let (a, b) = (setup.replica().await, setup.replica().await);
    launch(
        &a,
        campaign(serde_json::json!({"holdout": 0.3, "actions": [{"name": "one"}, {"name": "two"}]})),
    )
    .await;
    // Decisions are made on both replicas; one hands the log on.
    let recorder = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let consumer = corvus_log::outbox::Consumer {
        name: "measurement".to_owned(),
        sink: recorder.clone() as Arc<dyn EventSink<DecisionLogEntry>>,
        batch_size: Some(7),
    };
    let _log = a.spawn_log(vec![consumer], stop.clone());
    let when = Utc::now() - chrono::Duration::hours(1);
    let mut made = Vec::new();
    for i in 0..40 {
        let o = if i % 2 == 0 { &a } else { &b };
        let p = setup.people.add(consenting());
        made.push(o.decide(&caller(), &input(p, when)).await.unwrap().0.unwrap());
    }
    settled(&a).await;
    let seen = recorder.seen.lock().unwrap().clone();
    let ids: Vec<String> = seen
        .iter()
        .map(|e| e.decision.as_ref().unwrap().decision_id.clone())
        .collect();
    let mut expected: Vec<String> = made.iter().map(|d| d.id.to_string()).collect();
    // Decisions made one after another are handed on in that order, each once.
    assert_eq!(ids, expected);
    let held = made.iter().filter(|d| d.arm == "holdout").count();
    assert!(held > 0 && held < 40, "{held} of 40 held out");
    for (entry, d) in seen.iter().zip(&made) {
        let logged = entry.decision.as_ref().unwrap();
        assert_eq!(entry.workspace_id, "acme");
        assert_eq!(
            (
                logged.profile_id.as_str(),
                logged.campaign.as_str(),
                logged.arm.as_str(),
                logged.segment.as_str()
            ),
            (
                d.profile.to_string().as_str(),
                "winback",
                d.arm.as_str(),
                d.segment.as_str()
            )
        );
        assert_eq!(logged.propensity, d.propensity);
        assert_eq!(logged.action.is_empty(), d.arm == "holdout", "{logged:?}");
    }

    // The policy's consumer counted each send once; handed the same decisions again, it
    // counts none of them.
    let trials = |evidence: &HashMap<storage::Cell, (u64, u64)>| evidence.values().map(|v| v.1).sum::<u64>();
    let before = a.store.evidence(&ws()).await.unwrap();
    assert_eq!(trials(&before), (40 - held) as u64);
    let policy = Policy { store: a.store.clone() };
    assert!(policy.deliver(&seen).await.unwrap().is_empty());
    let after = a.store.evidence(&ws()).await.unwrap();
    assert_eq!(before, after);
    let names: Vec<String> = a
        .store
        .log()
        .consumers(&ws())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["measurement", POLICY_CONSUMER]);

    // An erasure takes the person's decisions out of the log as well.
    let erased = made[0].profile;
    a.deliver(&[change(profile_change::Change::Erased(ProfilesErased {
        profile_ids: vec![erased.to_string()],
        ..Default::default()
    }))])
    .await
    .unwrap();
    let kept: Vec<String> = a
        .store
        .log()
        .list(&ws(), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id.to_string())
        .collect();
    expected.remove(0);
    assert_eq!(kept, expected);
    stop.cancel();
}
