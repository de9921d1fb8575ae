//! The demo's population: synthetic people, the same for the same seed, and their events
//! ([`timeline`](super::timeline)) over sixty days. Each person knows their own identifiers,
//! so what identity makes of the events can be checked against the truth.
//!
//! Households: some couples share a tablet. Its app events carry the device id *and* the
//! `user_id` of whoever is signed in, which is what a real app sends; the tablet is seen
//! with two user ids, and since a profile holds at most one `user_id`, identity must keep
//! the device on the first person's profile and never merge the couple. A tablet sent
//! without the user id would be indistinguishable from one person's device.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use corvus_proto::common::v1::Event;

use super::timeline;

/// The span the events are spread over, ending now.
pub const WINDOW_DAYS: i64 = 60;

/// SplitMix64: small and fast, and the same seed always draws the same people.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; the modulo bias is far below anything a demo can show.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A whole second in `[from, to)`; `from` when the span is empty.
    pub fn time_in(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
        let span = (to - from).num_seconds();
        if span <= 0 {
            return from;
        }
        from + TimeDelta::seconds(self.below(span as u64) as i64)
    }

    pub fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from_digit(self.below(16) as u32, 16).unwrap_or('0'))
            .collect()
    }

    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One synthetic person and everything that truly identifies them.
#[derive(Debug, Clone)]
pub struct Person {
    pub index: usize,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: NaiveDate,
    pub postcode: String,
    pub city: &'static str,
    /// Lowercase, as identity normalises it.
    pub email: String,
    /// E.164, as identity normalises it.
    pub phone: Option<String>,
    pub user_id: Option<String>,
    pub loyalty_card: Option<String>,
    pub crm_id: Option<String>,
    /// Phones with the app.
    pub devices: Vec<String>,
    /// One anonymous id per browser.
    pub browsers: Vec<String>,
    /// A tablet shared with the other person of the household.
    pub shared_tablet: Option<String>,
    /// The misspelt name some of their identify events carry.
    pub misspelt: Option<(String, String)>,
    /// How many events they produced.
    pub events: usize,
    /// The identifiers their events carried that belong to them alone (not the shared
    /// tablet), in normal form.
    pub identifiers: Vec<(&'static str, String)>,
    /// For each of `identifiers`, the group of those linked to it by the events: what
    /// resolution could join from the events alone, with no rule in the way.
    pub linked: Vec<usize>,
}

impl Person {
    /// Those of the person's own identifiers that `events` carry, strongest first, each
    /// with the first of them it is linked to by events carrying both (or a chain of such).
    fn identifiers_in<'e>(&self, events: impl Iterator<Item = &'e Event>) -> (Vec<(&'static str, String)>, Vec<usize>) {
        let own: Vec<(&'static str, &String)> = [
            ("user_id", self.user_id.as_slice()),
            ("crm_id", self.crm_id.as_slice()),
            ("email", std::slice::from_ref(&self.email)),
            ("phone", self.phone.as_slice()),
            ("loyalty_card", self.loyalty_card.as_slice()),
            ("device_id", self.devices.as_slice()),
            ("anonymous_id", self.browsers.as_slice()),
        ]
        .into_iter()
        .flat_map(|(kind, values)| values.iter().map(move |value| (kind, value)))
        .collect();
        let position = |kind: &str, value: &str| {
            // Sources spell the email and phone their own way; the person has one of each.
            let value = match kind {
                "email" => self.email.as_str(),
                "phone" => self.phone.as_deref().unwrap_or_default(),
                _ => value,
            };
            own.iter().position(|(k, v)| *k == kind && v.as_str() == value)
        };
        let mut sent = vec![false; own.len()];
        let mut links = Links((0..own.len()).collect());
        for event in events {
            let carried: Vec<usize> = [("user_id", &event.user_id), ("anonymous_id", &event.anonymous_id)]
                .into_iter()
                .chain(event.identifiers.iter().map(|id| (id.kind.as_str(), &id.value)))
                .filter_map(|(kind, value)| position(kind, value))
                .collect();
            for &i in &carried {
                sent[i] = true;
                links.join(carried[0], i);
            }
        }
        let kept: Vec<usize> = (0..own.len()).filter(|&i| sent[i]).collect();
        let identifiers = kept.iter().map(|&i| (own[i].0, own[i].1.clone())).collect();
        let groups = kept.iter().map(|&i| links.root(i)).collect();
        (identifiers, groups)
    }

    pub fn name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// Union-find over a person's identifiers.
struct Links(Vec<usize>);

impl Links {
    fn root(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        self.0[a.max(b)] = a.min(b);
    }
}

/// People, their events oldest first, and the households sharing a tablet.
pub struct Population {
    pub people: Vec<Person>,
    pub events: Vec<Event>,
    /// The tablet's device id and the two people who share it.
    pub shared_tablets: Vec<(String, [usize; 2])>,
}

/// Draws `count` people and their events, ending at `now`. `tag` goes into every
/// identifier and message id, so that each run makes people of its own.
pub fn generate(count: usize, seed: u64, tag: &str, now: DateTime<Utc>) -> Population {
    // Each person has a stream of their own, so a person does not depend on `count`.
    let (mut people, rngs): (Vec<Person>, Vec<Rng>) = (0..count)
        .map(|index| {
            let mut rng = person_rng(seed, index);
            (draw_person(index, &mut rng, tag), rng)
        })
        .unzip();

    // Couples living together: the same address, and a tablet both sign in on.
    let mut households = Rng::new(seed ^ 0x686f_7573_6568_6f6c);
    let mut shared_tablets = Vec::new();
    for pair in (0..count.saturating_sub(1)).step_by(2) {
        let (a, b) = (pair, pair + 1);
        if people[a].user_id.is_some() && people[b].user_id.is_some() && households.chance(0.12) {
            let tablet = households.uuid().to_uppercase();
            let (postcode, city) = (people[a].postcode.clone(), people[a].city);
            people[b].postcode = postcode;
            people[b].city = city;
            people[a].shared_tablet = Some(tablet.clone());
            people[b].shared_tablet = Some(tablet.clone());
            shared_tablets.push((tablet, [a, b]));
        }
    }

    let start = now - TimeDelta::days(WINDOW_DAYS);
    let end = now - TimeDelta::minutes(1);
    let mut drafts = Vec::new();
    for (person, rng) in people.iter_mut().zip(rngs) {
        let mine = timeline::events_of(person, rng, tag, start, end);
        person.events = mine.len();
        (person.identifiers, person.linked) = person.identifiers_in(mine.iter().map(|(_, event)| event));
        drafts.extend(mine);
    }
    drafts.sort_by(|a, b| (a.0, &a.1.message_id).cmp(&(b.0, &b.1.message_id)));
    Population {
        people,
        events: drafts.into_iter().map(|(_, event)| event).collect(),
        shared_tablets,
    }
}

fn person_rng(seed: u64, index: usize) -> Rng {
    let mut rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64();
    rng
}

#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo", "Lily", "Arthur",
    "Isabella", "Muhammad", "Rosie", "Oscar", "Sophia", "Charlie", "Grace", "Jacob", "Freya", "Thomas", "Evie",
    "Henry", "Emily", "William", "Poppy", "James", "Ella", "Alfie", "Chloe", "Joshua", "Sienna", "Freddie", "Daisy",
    "Archie", "Phoebe", "Ethan", "Harper", "Isaac", "Florence", "Alexander", "Matilda", "Joseph", "Willow",
    "Edward", "Aisha", "Samuel", "Priya", "Daniel", "Zara", "Lucas", "Hannah", "Mohammed", "Ruby", "Adam",
    "Eleanor", "Ryan", "Niamh",
];

#[rustfmt::skip]
const LAST_NAMES: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson", "Wright",
    "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Thomas", "Clarke", "Jackson", "Wood",
    "Harris", "Edwards", "Turner", "Martin", "Cooper", "Hill", "Ward", "Hughes", "Moore", "Clark", "King",
    "Harrison", "Lewis", "Baker", "Lee", "Allen", "Morris", "Khan", "Scott", "Watson", "Davis", "Parker", "James",
    "Bennett", "Young", "Phillips", "Richardson", "Mitchell", "Bailey", "Carter", "Cook", "Singh", "Shaw", "Bell",
    "Collins", "Morgan", "Kelly", "Begum", "Campbell", "Murphy", "O'Brien", "Ahmed", "Fraser", "Reid", "Stewart",
    "Macdonald",
];

/// Postcode area and its city.
const AREAS: &[(&str, &str)] = &[
    ("M", "Manchester"),
    ("LS", "Leeds"),
    ("B", "Birmingham"),
    ("BS", "Bristol"),
    ("G", "Glasgow"),
    ("EH", "Edinburgh"),
    ("CF", "Cardiff"),
    ("NE", "Newcastle"),
    ("L", "Liverpool"),
    ("NG", "Nottingham"),
    ("SW", "London"),
    ("N", "London"),
    ("E", "London"),
    ("S", "Sheffield"),
    ("BT", "Belfast"),
];

const EMAIL_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

fn draw_person(index: usize, rng: &mut Rng, tag: &str) -> Person {
    let first_name = rng.pick(FIRST_NAMES).to_string();
    let last_name = rng.pick(LAST_NAMES).to_string();
    let born = NaiveDate::from_ymd_opt(1950, 1, 1).unwrap_or_default() + Days::new(rng.below(20_000));
    let (area, city) = *rng.pick(AREAS);
    let postcode = format!(
        "{area}{} {}{}{}",
        rng.between(1, 28),
        rng.below(10),
        char::from(b'A' + rng.below(26) as u8),
        char::from(b'A' + rng.below(26) as u8),
    );
    let simple = |s: &str| s.to_lowercase().replace('\'', "");
    let local = match rng.below(3) {
        0 => format!("{}.{}{index}", simple(&first_name), simple(&last_name)),
        1 => format!("{}{}{index}", simple(&first_name[..1]), simple(&last_name)),
        _ => format!("{}_{}{index}", simple(&last_name), simple(&first_name)),
    };
    let email = format!("{local}@{tag}.{}", rng.pick(EMAIL_DOMAINS));
    // UK mobiles: +44 7 then nine digits: four from the run, five for the person.
    let run_digits = stable_hash(tag) % 10_000;
    let phone = rng
        .chance(0.9)
        .then(|| format!("+447{run_digits:04}{:05}", index % 100_000));
    let user_id = rng.chance(0.85).then(|| format!("{tag}-{index:06}"));
    let loyalty_card = rng.chance(0.75).then(|| format!("6337{run_digits:04}{index:08}"));
    let crm_id = rng.chance(0.35).then(|| format!("CRM-{tag}-{index:06}"));
    let devices = if user_id.is_some() && rng.chance(0.55) {
        let phones = if rng.chance(0.15) { 2 } else { 1 };
        (0..phones).map(|_| rng.uuid().to_uppercase()).collect()
    } else {
        Vec::new()
    };
    let browsers = match rng.below(100) {
        0..50 => 1,
        50..80 => 2,
        80..95 => 3,
        _ => 4,
    };
    let browsers = (0..browsers).map(|_| rng.uuid()).collect();
    let misspelt = rng.chance(0.04).then(|| {
        if rng.chance(0.5) {
            (misspell(&first_name, rng), last_name.clone())
        } else {
            (first_name.clone(), misspell(&last_name, rng))
        }
    });
    Person {
        index,
        first_name,
        last_name,
        date_of_birth: born,
        postcode,
        city,
        email,
        phone,
        user_id,
        loyalty_card,
        crm_id,
        devices,
        browsers,
        shared_tablet: None,
        misspelt,
        events: 0,
        identifiers: Vec::new(),
        linked: Vec::new(),
    }
}

/// One typing error after the first letter: two neighbours swapped, or one dropped.
pub fn misspell(name: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    if chars.len() < 3 {
        return name.to_owned();
    }
    let at = rng.between(1, chars.len() as u64 - 2) as usize;
    if rng.chance(0.5) && chars[at] != chars[at + 1] {
        chars.swap(at, at + 1);
    } else {
        chars.remove(at);
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_same_seed_draws_the_same_population() {
        let a = generate(200, 7, "t1", now());
        let b = generate(200, 7, "t1", now());
        assert_eq!(a.events, b.events);
        let c = generate(200, 8, "t1", now());
        assert_ne!(a.events, c.events);
        // A person does not depend on how many others there are.
        let fewer = generate(100, 7, "t1", now());
        assert_eq!(fewer.people[42].identifiers, a.people[42].identifiers);
    }

    #[test]
    fn events_are_in_time_order_within_the_window_with_unique_ids() {
        let population = generate(300, 1, "t2", now());
        let times: Vec<i64> = population
            .events
            .iter()
            .map(|e| e.timestamp.as_ref().unwrap().seconds)
            .collect();
        assert!(times.is_sorted());
        assert!(times[0] >= (now() - TimeDelta::days(WINDOW_DAYS)).timestamp());
        assert!(*times.last().unwrap() < now().timestamp());
        let ids: std::collections::HashSet<_> = population.events.iter().map(|e| &e.message_id).collect();
        assert_eq!(ids.len(), population.events.len());
        let total: usize = population.people.iter().map(|p| p.events).sum();
        assert_eq!(total, population.events.len());
        // Every event names someone, as the API requires.
        assert!(
            population
                .events
                .iter()
                .all(|e| !e.anonymous_id.is_empty() || !e.user_id.is_empty() || !e.identifiers.is_empty())
        );
        assert!(!population.shared_tablets.is_empty());
        // What a person's events carried is what they are known by.
        let person = &population.people[0];
        assert!(person.identifiers.contains(&("email", person.email.clone())) || person.events < 5);
        assert!(
            person
                .identifiers
                .iter()
                .all(|(kind, _)| *kind != "device_id" || !person.devices.is_empty())
        );
    }

    #[test]
    fn a_misspelling_changes_one_letter() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let typo = misspell("Isabella", &mut rng);
            assert_ne!(typo, "Isabella");
            assert!(typo.starts_with('I') && (7..=8).contains(&typo.len()));
        }
        assert_eq!(misspell("Al", &mut rng), "Al");
    }
}
