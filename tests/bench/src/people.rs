//! Synthetic people and the events that identify them: the identity mix.
//!
//! Every person browses with an anonymous id and a device id; three in four also have an
//! account (a user id and an email, later a phone or a loyalty card). The two sides are
//! first seen apart, as two profiles, until some of the account holders log in on their
//! browser: an event carrying the anonymous id and the user id, which merges them. Every
//! event carries an anonymous id and/or a user id, and one or two further identifiers.
//!
//! Events are made in order from each person's state, so "first seen", "new to a known
//! person" and "joins two profiles" hold in the order of generation, which is the order
//! the log receives them in, give or take the few batches in flight.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::corpus::{Batch, Rng};

const ANONYMOUS: u8 = 1;
const DEVICE: u8 = 1 << 1;
const USER: u8 = 1 << 2;
const EMAIL: u8 = 1 << 3;
const PHONE: u8 = 1 << 4;
const CARD: u8 = 1 << 5;
const BROWSER_SIDE: u8 = ANONYMOUS | DEVICE;
const ACCOUNT_SIDE: u8 = USER | EMAIL | PHONE | CARD;

/// What one person has sent so far.
#[derive(Debug, Clone, Copy, Default)]
struct Person {
    /// The identifiers sent so far (`ANONYMOUS`, `DEVICE`, …).
    seen: u8,
    /// The browser and the account were joined by one event.
    joined: bool,
}

/// What the events made so far hold, by what they do to the identity graph.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixCounts {
    pub events: u64,
    /// Events of which no identifier was seen before: a new profile.
    pub new_profiles: u64,
    /// Events that bring an identifier new to a person already seen.
    pub new_identifiers: u64,
    /// Events joining a browser and an account both seen before: a merge.
    pub merges: u64,
}

/// The people of one workspace, and the events they send next.
pub struct Mix {
    seed: u64,
    people: Vec<Person>,
    next: u64,
    pub counts: MixCounts,
}

/// Which of a person's identifiers an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Browser,
    Account,
    /// Logging in on the browser: both sides at once.
    Join,
    /// Browsing while logged in, once joined.
    Both,
}

impl Mix {
    pub fn new(seed: u64, people: usize) -> Self {
        Self {
            seed,
            people: vec![Person::default(); people.max(1)],
            next: 0,
            counts: MixCounts::default(),
        }
    }

    pub fn people(&self) -> usize {
        self.people.len()
    }

    /// A person's fixed traits: whether they have an account, and whether they will log
    /// in on their browser.
    fn traits(&self, person: usize) -> (bool, bool) {
        let mut r = Rng::new(self.seed ^ 0x5EED_FACE, person as u64);
        let account = r.chance(75);
        (account, account && r.chance(40))
    }

    fn anonymous_id(&self, person: usize) -> String {
        Rng::new(self.seed ^ 0xA70, person as u64).uuid(person as u64)
    }

    fn identifier(&self, person: usize, which: u8) -> (&'static str, String) {
        match which {
            ANONYMOUS => ("anonymous_id", self.anonymous_id(person)),
            DEVICE => (
                "device_id",
                format!("dev-{:016x}", Rng::new(self.seed ^ 0xDE7, person as u64).next()),
            ),
            USER => ("user_id", format!("user_{person:08}")),
            EMAIL => ("email", format!("person{person}@shop.example")),
            PHONE => ("phone", format!("+44 77{person:08}")),
            _ => ("loyalty_card", format!("LC{person:010}")),
        }
    }

    /// The next event, as a Segment JSON message.
    pub fn next_message(&mut self, now: DateTime<Utc>) -> Value {
        let index = self.next;
        self.next += 1;
        let mut r = Rng::new(self.seed, index);
        let person = r.below(self.people.len() as u64) as usize;
        let (account, logs_in) = self.traits(person);
        let state = self.people[person];
        let both_seen = state.seen & BROWSER_SIDE != 0 && state.seen & ACCOUNT_SIDE != 0;
        let side = if !account {
            Side::Browser
        } else if state.joined {
            Side::Both
        } else if logs_in && both_seen && r.chance(40) {
            Side::Join
        } else if r.chance(50) {
            Side::Browser
        } else {
            Side::Account
        };
        // The identifiers beyond anonymous id and user id: one or two.
        let extra = match side {
            Side::Browser if !account && r.chance(10) => DEVICE | EMAIL,
            Side::Browser | Side::Join => DEVICE,
            Side::Account | Side::Both => {
                let first = if side == Side::Both && r.chance(50) {
                    DEVICE
                } else {
                    EMAIL
                };
                let second = if r.chance(35) { *r.pick(&[PHONE, CARD]) } else { 0 };
                first | second
            }
        };
        let base = match side {
            Side::Browser => ANONYMOUS,
            Side::Account => USER,
            Side::Join | Side::Both => ANONYMOUS | USER,
        };
        let carried = base | extra;
        let fresh = carried & !state.seen;
        self.counts.events += 1;
        if fresh == carried {
            self.counts.new_profiles += 1;
        } else if side == Side::Join && both_seen && !state.joined {
            self.counts.merges += 1;
        } else if fresh != 0 {
            self.counts.new_identifiers += 1;
        }
        let entry = &mut self.people[person];
        entry.seen |= carried;
        entry.joined |= side == Side::Join;

        let mut identifiers = Map::new();
        for which in [DEVICE, EMAIL, PHONE, CARD] {
            if extra & which != 0 {
                let (kind, value) = self.identifier(person, which);
                identifiers.insert(kind.to_owned(), value.into());
            }
        }
        let identify = (fresh != 0 && carried & ACCOUNT_SIDE != 0) || side == Side::Join;
        let timestamp = now - Duration::milliseconds(r.below(60_000) as i64);
        let channel = match side {
            Side::Browser | Side::Join | Side::Both => "web",
            Side::Account if extra & CARD != 0 => "store",
            Side::Account => "app",
        };
        let mut message = json!({
            "messageId": r.uuid(index),
            "timestamp": timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
            "context": {
                "channel": channel,
                "identifiers": identifiers,
                "library": {"name": "analytics.js", "version": "5.2.1"},
            },
        });
        let fields = message.as_object_mut().expect("an object");
        if base & ANONYMOUS != 0 {
            fields.insert("anonymousId".into(), self.anonymous_id(person).into());
        }
        if base & USER != 0 {
            fields.insert("userId".into(), self.identifier(person, USER).1.into());
        }
        if identify {
            fields.insert("type".into(), "identify".into());
            fields.insert(
                "traits".into(),
                json!({
                    "first_name": *r.pick(&["Ada", "Grace", "Alan", "Edsger", "Barbara"]),
                    "plan": *r.pick(&["free", "plus", "pro"]),
                    "marketing_opt_in": r.chance(40),
                }),
            );
        } else if side == Side::Browser && r.chance(70) {
            let (name, path) = *r.pick(&[("Home", "/"), ("Pricing", "/pricing"), ("Checkout", "/checkout")]);
            fields.insert("type".into(), "page".into());
            fields.insert("name".into(), name.into());
            fields.insert("properties".into(), json!({"path": path, "title": name}));
        } else {
            fields.insert("type".into(), "track".into());
            fields.insert("event".into(), (*r.pick(&["Product Viewed", "Order Completed"])).into());
            fields.insert(
                "properties".into(),
                json!({
                    "product_id": format!("sku-{}", r.below(1000)),
                    "revenue": (r.below(50_000) as f64) / 100.0,
                    "currency": "EUR",
                }),
            );
        }
        message
    }

    /// The next `total` events as encoded `IngestRequest`s of `size` events.
    pub fn batches(&mut self, total: usize, size: usize) -> anyhow::Result<Vec<Batch>> {
        let now = Utc::now();
        let mut batches = Vec::with_capacity(total.div_ceil(size));
        for start in (0..total).step_by(size) {
            let end = (start + size).min(total);
            let events = (start..end)
                .map(|_| {
                    let message = self.next_message(now);
                    corvus_ingestion::domain::segment::from_json(message, None)
                        .map_err(|v| anyhow::anyhow!("generated identity event is invalid: {v:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            batches.push(Batch::grpc(events, now));
        }
        Ok(batches)
    }

    /// One identifier each of up to `count` people seen so far, the strongest each has
    /// sent: distinct people, so distinct profiles.
    pub fn known(&self, count: usize) -> Vec<(&'static str, String)> {
        self.people
            .iter()
            .enumerate()
            .filter(|(_, p)| p.seen != 0)
            .take(count)
            .map(|(person, p)| {
                let strongest = [USER, EMAIL, PHONE, CARD, DEVICE, ANONYMOUS]
                    .into_iter()
                    .find(|which| p.seen & which != 0)
                    .unwrap_or(ANONYMOUS);
                self.identifier(person, strongest)
            })
            .collect()
    }

    /// The user id of a person whose account was seen, picked by `n`.
    pub fn account_holder(&self, n: u64) -> Option<String> {
        let holders = self.people.iter().filter(|p| p.seen & USER != 0).count();
        if holders == 0 {
            return None;
        }
        let pick = Rng::new(self.seed ^ 0x960BE, n).below(holders as u64) as usize;
        let (person, _) = self
            .people
            .iter()
            .enumerate()
            .filter(|(_, p)| p.seen & USER != 0)
            .nth(pick)?;
        Some(self.identifier(person, USER).1)
    }
}
