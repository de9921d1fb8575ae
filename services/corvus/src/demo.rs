//! `corvus demo`: an omnichannel story told to a running Corvus, and a measure of how well
//! identity put it back together.
//!
//! A seeded population of synthetic people browses, signs in, uses the app, opens emails,
//! gets texts, shops in store, calls, chats, answers surveys and changes their consent over
//! sixty days ([`population`], [`timeline`]). Their events go through the public gRPC API
//! in time order; once identity has resolved every one, each person's identifiers are
//! looked up with `GetProfile` and the profiles are compared with the people really there
//! ([`evaluate`]).
//!
//! Identifiers and message ids carry a tag made of the run id and the seed, so every run
//! makes new people and a second run is not deduplicated away; repeating a run id with the
//! same seed resends the same events, which the server acknowledges as duplicates.

mod population;
mod report;
mod timeline;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use corvus::client::{BearerAuth, connect};
use corvus_ingestion::domain::validate::to_timestamp;
use corvus_proto::common::v1::{Event, Identifier};
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{GetProfileRequest, MatchingStage, Profile, RunMatchingRequest, get_profile_request};
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::{EventStatusCode, IngestRequest, IngestStreamRequest, ListConsumersRequest};
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use prost::Message;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use population::{Person, Population};

type Authed = InterceptedService<Channel, BearerAuth>;

/// The consumer whose lag says how much identity has still to resolve.
const IDENTITY_CONSUMER: &str = corvus_identity::CONSUMER_NAME;
/// Lookups in flight at once while measuring.
const LOOKUP_CONCURRENCY: usize = 16;
/// Stay well under the server's batch limit (500 KiB) whatever the batch size.
const MAX_BATCH_BYTES: usize = 400 * 1024;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The Corvus gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// An API key allowed to ingest and read (the `corvus dev` admin key; also `CORVUS_API_KEY`).
    #[arg(long, env = "CORVUS_API_KEY", hide_env_values = true)]
    key: String,
    /// How many people to simulate.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=99_999))]
    people: u32,
    /// Seeds the population: the same seed draws the same people and events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tags the run's identifiers and message ids; a new one by default. Repeat a run's id
    /// and seed to resend its events, which the server then acknowledges as duplicates.
    #[arg(long)]
    run_id: Option<String>,
    /// Events per batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
    batch_size: u32,
    /// Seconds to wait for identity to resolve every event.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Then run probabilistic matching over the profiles and measure again.
    #[arg(long = "match")]
    run_matching: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let service = connect(&args.addr, &args.key).await?;
    let mut ingestion = IngestionServiceClient::new(service.clone());
    let mut identity = IdentityServiceClient::new(service);

    let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
    let tag = run_tag(&run_id, args.seed);
    let population = population::generate(args.people as usize, args.seed, &tag, Utc::now());
    eprintln!(
        "corvus demo: run {run_id} (seed {}): {} people, {} events over {} days",
        args.seed,
        population.people.len(),
        population.events.len(),
        population::WINDOW_DAYS
    );

    eprintln!("sending, oldest first, in batches of {}", args.batch_size);
    let started = Instant::now();
    let sent = send(&mut ingestion, &population.events, args.batch_size as usize).await?;
    let send_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {} accepted, {} duplicates, {} rejected in {send_seconds:.1} s",
        sent.accepted, sent.duplicates, sent.rejected
    );
    for problem in &sent.problems {
        eprintln!("  rejected: {problem}");
    }

    eprintln!("waiting for identity to resolve every event");
    let started = Instant::now();
    let dead_letters = wait_for_identity(&mut ingestion, Duration::from_secs(args.timeout)).await?;
    let identity_seconds = started.elapsed().as_secs_f64();
    if dead_letters > 0 {
        eprintln!("  identity has {dead_letters} dead letters in this workspace (ListDeadLetters says why)");
    }

    eprintln!("looking up every person's identifiers");
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let located = look_up(&identity, &population, progress).await?;
    eprintln!(
        "  {} identifiers located in {:.1} s",
        located.profile_of.len(),
        started.elapsed().as_secs_f64()
    );
    let resolution = evaluate(placements(&population.people, &located.profile_of));
    let linkable = linkable(&population.people);
    let households = tablet_households(&population, &located.profile_of);

    let matching = if args.run_matching {
        eprintln!("running probabilistic matching");
        let started = Instant::now();
        let (auto_merged, queued_for_review) = run_matching(&mut identity).await?;
        let seconds = started.elapsed().as_secs_f64();
        let located = look_up(&identity, &population, progress).await?;
        Some(report::Matching {
            seconds,
            auto_merged,
            queued_for_review,
            resolution: evaluate(placements(&population.people, &located.profile_of)),
            households: tablet_households(&population, &located.profile_of),
            events_on_profiles: located.events(),
        })
    } else {
        None
    };

    let featured = match featured_person(&population.people) {
        Some(person) => Some(report::Featured::new(
            person,
            fetch_profile(&mut identity, person).await?,
        )),
        None => None,
    };
    let events = population.events.len() as u64;
    let report = report::Report {
        run_id,
        seed: args.seed,
        people: population.people.len(),
        days: population::WINDOW_DAYS,
        events,
        accepted: sent.accepted,
        duplicates: sent.duplicates,
        rejected: sent.rejected,
        send_seconds,
        events_per_second: events as f64 / send_seconds.max(f64::EPSILON),
        identity_seconds,
        dead_letters,
        linkable,
        resolution,
        households,
        events_on_profiles: located.events(),
        matching,
        featured,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// A short id for a run, from the clock.
fn new_run_id() -> String {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    base36(population::stable_hash(&nanos.to_string()), 6)
}

/// What goes into identifiers and message ids: the run id and the seed, so that the same
/// run id with another seed still makes people of its own.
fn run_tag(run_id: &str, seed: u64) -> String {
    base36(population::stable_hash(&format!("{run_id}/{seed}")), 6)
}

fn base36(mut n: u64, digits: usize) -> String {
    (0..digits)
        .map(|_| {
            let digit = (n % 36) as u32;
            n /= 36;
            char::from_digit(digit, 36).unwrap_or('0')
        })
        .collect()
}

/// What the server said about the events sent.
#[derive(Debug, Default)]
struct Sent {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    /// The first few rejections: message id, field and reason.
    problems: Vec<String>,
}

/// Sends `events` over one `IngestStream`, in order, in batches of at most `batch_size`
/// events and [`MAX_BATCH_BYTES`].
async fn send(
    client: &mut IngestionServiceClient<Authed>,
    events: &[Event],
    batch_size: usize,
) -> anyhow::Result<Sent> {
    let mut batches = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for event in events {
        let size = event.encoded_len() + 8;
        if !batch.is_empty() && (batch.len() == batch_size || bytes + size > MAX_BATCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(event.clone());
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let requests = batches.into_iter().enumerate().map(|(id, events)| IngestStreamRequest {
        batch_id: id as u64,
        batch: Some(IngestRequest {
            events,
            sent_at: Some(to_timestamp(Utc::now())),
        }),
    });
    // Generated lazily, so `sent_at` is stamped as each batch leaves.
    let requests = tokio_stream::iter(requests);
    let mut acks = client
        .ingest_stream(requests)
        .await
        .context("IngestStream refused")?
        .into_inner();
    let mut sent = Sent::default();
    while let Some(ack) = acks.message().await.context("IngestStream failed")? {
        let result = ack.result.unwrap_or_default();
        sent.accepted += u64::from(result.accepted);
        sent.duplicates += u64::from(result.duplicates);
        sent.rejected += u64::from(result.rejected);
        let rejected = result
            .statuses
            .iter()
            .filter(|s| s.code == EventStatusCode::Rejected as i32);
        for status in rejected.take(5usize.saturating_sub(sent.problems.len())) {
            sent.problems
                .push(format!("{}: {}: {}", status.message_id, status.field, status.reason));
        }
    }
    Ok(sent)
}

/// Polls `ListConsumers` until identity has no event left to resolve; its dead letters.
async fn wait_for_identity(client: &mut IngestionServiceClient<Authed>, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let consumers = client
            .list_consumers(ListConsumersRequest {})
            .await
            .context("ListConsumers failed")?
            .into_inner()
            .consumers;
        let Some(identity) = consumers.iter().find(|c| c.name == IDENTITY_CONSUMER) else {
            let names: Vec<_> = consumers.iter().map(|c| c.name.as_str()).collect();
            anyhow::bail!(
                "the server has no consumer named {IDENTITY_CONSUMER:?} (it has {names:?}): is identity running?"
            );
        };
        if identity.lag == 0 {
            return Ok(identity.dead_letters);
        }
        if Instant::now() >= deadline {
            let error = if identity.last_error.is_empty() {
                String::new()
            } else {
                format!("; its last error: {}", identity.last_error)
            };
            anyhow::bail!(
                "identity still had {} events to resolve after {}s{error}",
                identity.lag,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An identifier as looked up: kind and normal-form value.
type Key = (&'static str, String);

/// Where the population's identifiers are: the profile each is on (`None`: on no profile),
/// and how many events each of those profiles counts.
#[derive(Debug, Default)]
struct Located {
    profile_of: HashMap<Key, Option<String>>,
    events_on: HashMap<String, u64>,
}

impl Located {
    fn merge(mut self, other: Located) -> Self {
        self.profile_of.extend(other.profile_of);
        self.events_on.extend(other.events_on);
        self
    }

    /// Events counted on the profiles found. Every event carries one of its person's
    /// identifiers, so this equals the events sent when none is lost or counted twice.
    fn events(&self) -> u64 {
        self.events_on.values().sum()
    }
}

/// Locates every person's own identifiers and the shared tablets.
async fn look_up(
    client: &IdentityServiceClient<Authed>,
    population: &Population,
    progress: bool,
) -> anyhow::Result<Located> {
    let tablets = population
        .shared_tablets
        .iter()
        .map(|(tablet, _)| vec![("device_id", tablet.clone())]);
    let groups: Vec<Vec<Key>> = population
        .people
        .iter()
        .map(|p| p.identifiers.clone())
        .chain(tablets)
        .collect();
    let bar = if progress {
        ProgressBar::new(groups.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let located = futures::stream::iter(groups)
        .map(|keys| {
            let mut client = client.clone();
            let bar = bar.clone();
            async move {
                let located = locate(&mut client, keys).await;
                bar.inc(1);
                located
            }
        })
        .buffer_unordered(LOOKUP_CONCURRENCY)
        .try_fold(Located::default(), |all, some| futures::future::ok(all.merge(some)))
        .await;
    bar.finish_and_clear();
    located
}

/// Locates one person's identifiers. A profile lists every identifier it holds, so the
/// person's other identifiers on it need no lookup of their own.
async fn locate(client: &mut IdentityServiceClient<Authed>, keys: Vec<Key>) -> anyhow::Result<Located> {
    let mut held: HashMap<(String, String), String> = HashMap::new();
    let mut located = Located::default();
    for key in keys {
        let known = held.get(&(key.0.to_owned(), key.1.clone())).cloned();
        let profile = match known {
            Some(profile) => Some(profile),
            None => get_profile(client, key.0, &key.1).await?.map(|profile| {
                for i in profile.identifiers {
                    held.insert((i.kind, i.value), profile.profile_id.clone());
                }
                located
                    .events_on
                    .insert(profile.profile_id.clone(), profile.event_count);
                profile.profile_id
            }),
        };
        located.profile_of.insert(key, profile);
    }
    Ok(located)
}

/// The profile holding `kind:value`, or `None` when no profile does.
async fn get_profile(
    client: &mut IdentityServiceClient<Authed>,
    kind: &str,
    value: &str,
) -> anyhow::Result<Option<Profile>> {
    let request = GetProfileRequest {
        lookup: Some(get_profile_request::Lookup::Identifier(Identifier {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })),
        include_scores: false,
    };
    match client.get_profile(request).await {
        Ok(response) => Ok(response.into_inner().profile),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            anyhow::bail!("the server does not serve corvus.identity.v1.IdentityService")
        }
        Err(status) => Err(anyhow::anyhow!(status).context(format!("GetProfile {kind}:{value} failed"))),
    }
}

/// Every person's identifiers as (person, profile) pairs for [`evaluate`].
fn placements<'a>(
    people: &'a [Person],
    lookups: &'a HashMap<Key, Option<String>>,
) -> impl Iterator<Item = (usize, Option<&'a str>)> {
    people.iter().flat_map(move |person| {
        person.identifiers.iter().map(move |key| {
            let profile = lookups.get(key).and_then(|p| p.as_deref());
            (person.index, profile)
        })
    })
}

/// The resolution a resolver would reach that joined every pair of identifiers some events
/// carry together, transitively, and nothing else: the most the events allow without
/// probabilistic matching (a rule such as uniqueness only ever keeps identifiers apart).
fn linkable(people: &[Person]) -> Resolution {
    let groups: Vec<(usize, String)> = people
        .iter()
        .flat_map(|p| {
            p.linked
                .iter()
                .map(move |group| (p.index, format!("{}/{group}", p.index)))
        })
        .collect();
    evaluate(groups.iter().map(|(person, group)| (*person, Some(group.as_str()))))
}

/// How identity's profiles compare with the people really there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolution {
    pub people: usize,
    /// Identifiers looked up, over all people.
    pub identifiers: usize,
    /// Identifiers no profile holds.
    pub not_found: usize,
    /// Distinct profiles the identifiers are on.
    pub profiles: usize,
    /// Of the pairs of identifiers found on one profile, the share that belong to one person.
    pub precision: f64,
    /// Of the pairs of identifiers of one person, the share found on one profile.
    pub recall: f64,
    /// People whose identifiers are on more than one profile (or on none).
    pub split_people: usize,
    /// Profiles holding identifiers of more than one person.
    pub overmerged_profiles: usize,
    /// People on exactly one profile that holds no one else.
    pub exact_people: usize,
}

/// Pairwise precision and recall of a clustering of identifiers. Each item is one
/// identifier: the person it truly belongs to, and the profile it was found on (`None`: on
/// no profile, so in a cluster of its own). Pairs are counted per (person, profile) cell,
/// never enumerated: a cell of n identifiers holds n(n-1)/2 true same-profile pairs.
pub fn evaluate<'a>(placements: impl IntoIterator<Item = (usize, Option<&'a str>)>) -> Resolution {
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let mut cells: HashMap<(usize, &str), u64> = HashMap::new();
    let mut per_person: HashMap<usize, (u64, u64)> = HashMap::new(); // identifiers, not found
    let mut identifiers = 0;
    for (person, profile) in placements {
        identifiers += 1;
        let counts = per_person.entry(person).or_default();
        counts.0 += 1;
        match profile {
            Some(profile) => *cells.entry((person, profile)).or_default() += 1,
            None => counts.1 += 1,
        }
    }
    let mut per_profile: HashMap<&str, (u64, usize)> = HashMap::new(); // identifiers, people
    let mut profiles_of: HashMap<usize, usize> = HashMap::new();
    for (&(person, profile), &n) in &cells {
        let entry = per_profile.entry(profile).or_default();
        entry.0 += n;
        entry.1 += 1;
        *profiles_of.entry(person).or_default() += 1;
    }

    let same_both: u64 = cells.values().map(|&n| pairs(n)).sum();
    let same_profile: u64 = per_profile.values().map(|&(n, _)| pairs(n)).sum();
    let same_person: u64 = per_person.values().map(|&(n, _)| pairs(n)).sum();
    let ratio = |part: u64, whole: u64| if whole == 0 { 1.0 } else { part as f64 / whole as f64 };

    let clusters = |person: &usize, not_found: u64| profiles_of.get(person).copied().unwrap_or(0) as u64 + not_found;
    let split_people = per_person
        .iter()
        .filter(|(person, (_, not_found))| clusters(person, *not_found) > 1)
        .count();
    let exact_people = cells
        .iter()
        .filter(|((person, profile), _)| {
            per_person[person].1 == 0 && profiles_of[person] == 1 && per_profile[profile].1 == 1
        })
        .count();
    Resolution {
        people: per_person.len(),
        identifiers,
        not_found: per_person.values().map(|&(_, missing)| missing as usize).sum(),
        profiles: per_profile.len(),
        precision: ratio(same_both, same_profile),
        recall: ratio(same_both, same_person),
        split_people,
        overmerged_profiles: per_profile.values().filter(|&&(_, people)| people > 1).count(),
        exact_people,
    }
}

/// Households sharing a tablet: whether identity kept the two people apart.
fn tablet_households(population: &Population, lookups: &HashMap<Key, Option<String>>) -> report::Households {
    let profile_of = |person: usize| {
        let user = population.people[person].user_id.clone()?;
        lookups.get(&("user_id", user)).cloned().flatten()
    };
    let merged = population
        .shared_tablets
        .iter()
        .filter(|(_, [a, b])| profile_of(*a).is_some_and(|profile| profile_of(*b) == Some(profile)))
        .count();
    let tablets_found = population
        .shared_tablets
        .iter()
        .filter(|(tablet, _)| lookups.get(&("device_id", tablet.clone())).is_some_and(Option::is_some))
        .count();
    report::Households {
        shared_tablets: population.shared_tablets.len(),
        tablets_found,
        merged,
    }
}

/// Runs matching with the default fields and thresholds; profiles auto-merged and pairs
/// queued for review.
async fn run_matching(client: &mut IdentityServiceClient<Authed>) -> anyhow::Result<(u64, u64)> {
    let mut progress = client
        .run_matching(RunMatchingRequest::default())
        .await
        .context("RunMatching failed")?
        .into_inner();
    let mut last = None;
    while let Some(update) = progress.message().await.context("RunMatching failed")? {
        eprintln!(
            "  {:?}: {} profiles, {} candidate pairs, {} merged, {} for review ({} ms)",
            update.stage(),
            update.profiles,
            update.candidate_pairs,
            update.auto_merged,
            update.queued_for_review,
            update.elapsed_ms
        );
        last = Some(update);
    }
    match last {
        Some(done) if done.stage() == MatchingStage::Done => Ok((done.auto_merged, done.queued_for_review)),
        _ => anyhow::bail!("RunMatching ended before it was done"),
    }
}

/// The person whose profile tells the most: the most kinds of identifier, then the most
/// browsers and events.
fn featured_person(people: &[Person]) -> Option<&Person> {
    people.iter().max_by_key(|p| {
        let kinds: HashSet<_> = p.identifiers.iter().map(|(kind, _)| *kind).collect();
        (
            kinds.len(),
            p.shared_tablet.is_some(),
            p.misspelt.is_some(),
            p.browsers.len(),
            p.events,
            std::cmp::Reverse(p.index),
        )
    })
}

/// The person's profile, found by their strongest identifier.
async fn fetch_profile(client: &mut IdentityServiceClient<Authed>, person: &Person) -> anyhow::Result<Option<Profile>> {
    match person.identifiers.first() {
        Some((kind, value)) => get_profile(client, kind, value).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(placements: &[(usize, Option<&'static str>)]) -> Resolution {
        evaluate(placements.iter().copied())
    }

    #[test]
    fn a_perfect_resolution_scores_one() {
        let r = eval(&[
            (0, Some("p1")),
            (0, Some("p1")),
            (0, Some("p1")),
            (1, Some("p2")),
            (2, Some("p3")),
        ]);
        assert_eq!((r.precision, r.recall), (1.0, 1.0));
        assert_eq!((r.people, r.profiles, r.identifiers), (3, 3, 5));
        assert_eq!(
            (r.split_people, r.overmerged_profiles, r.exact_people, r.not_found),
            (0, 0, 3, 0)
        );
    }

    #[test]
    fn splits_merges_and_misses_are_counted_per_cell() {
        // Person 0 (a, b, c): a and b on P1, c on P2 — split.
        // Person 1 (d, e) and person 2 (f): all on P3 — over-merged.
        // Person 3 (g) alone on P4. Person 4 (h, i): h on P5, i on no profile — split.
        let r = eval(&[
            (0, Some("P1")),
            (0, Some("P1")),
            (0, Some("P2")),
            (1, Some("P3")),
            (1, Some("P3")),
            (2, Some("P3")),
            (3, Some("P4")),
            (4, Some("P5")),
            (4, None),
        ]);
        // True same-profile pairs: ab (cell 0,P1) and de (cell 1,P3) = 2.
        // Same-profile pairs: ab, plus de df ef on P3 = 4. Same-person pairs: ab ac bc, de, hi = 5.
        assert_eq!(r.precision, 2.0 / 4.0);
        assert_eq!(r.recall, 2.0 / 5.0);
        assert_eq!(r.people, 5);
        assert_eq!(r.identifiers, 9);
        assert_eq!(r.not_found, 1);
        assert_eq!(r.profiles, 5);
        assert_eq!(r.split_people, 2);
        assert_eq!(r.overmerged_profiles, 1);
        assert_eq!(r.exact_people, 1);
    }

    #[test]
    fn everything_on_one_profile_has_full_recall_and_chance_precision() {
        // Two people of two identifiers each: 1 + 1 true pairs out of 6 on the profile.
        let r = eval(&[(0, Some("p")), (0, Some("p")), (1, Some("p")), (1, Some("p"))]);
        assert_eq!(r.recall, 1.0);
        assert_eq!(r.precision, 2.0 / 6.0);
        assert_eq!(
            (r.profiles, r.split_people, r.overmerged_profiles, r.exact_people),
            (1, 0, 1, 0)
        );
    }

    #[test]
    fn nothing_found_is_all_split() {
        let r = eval(&[(0, None), (0, None), (1, None)]);
        assert_eq!((r.precision, r.recall), (1.0, 0.0));
        assert_eq!((r.profiles, r.not_found, r.split_people, r.exact_people), (0, 3, 1, 0));
    }

    #[test]
    fn run_tags_differ_by_run_and_seed() {
        assert_eq!(run_tag("abc", 1), run_tag("abc", 1));
        assert_ne!(run_tag("abc", 1), run_tag("abc", 2));
        assert_ne!(run_tag("abc", 1), run_tag("abd", 1));
        assert_eq!(run_tag("abc", 1).len(), 6);
    }
}
