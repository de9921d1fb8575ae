//! One person's sixty days as events, the way a brand's systems would send them:
//!
//! - the website sends an `anonymous_id` per browser, and `user_id` once signed in; a
//!   click from an email lands with the email address as an identifier;
//! - the app sends `user_id` and the `device_id` of the phone or the household's tablet;
//! - the email, SMS, till, call-centre, chat and survey systems know the person only by
//!   the identifier they work with (email, phone, loyalty card, CRM id), and send only
//!   that;
//! - the CRM and the loyalty registration send identify events with traits, and a few
//!   percent of those carry a name with a typing error.

use chrono::{DateTime, TimeDelta, Utc};
use corvus_ingestion::domain::validate::to_timestamp;
use corvus_proto::common::v1::{Campaign, Channel, Context, Event, EventType, Identifier};
use corvus_proto::raw::RawStruct;
use serde_json::json;

use super::population::{Person, Rng};

#[rustfmt::skip]
const PAGES: &[&str] = &[
    "Home", "Search", "Product", "Product", "Product", "Category", "Basket", "Offers", "Stores",
];
#[rustfmt::skip]
const SCREENS: &[&str] = &[
    "Home", "Product", "Product", "Basket", "Orders", "Offers", "Loyalty card",
];
const PRODUCTS: &[(&str, &str, f64)] = &[
    ("SKU-1001", "Merino jumper", 59.0),
    ("SKU-1002", "Linen shirt", 35.0),
    ("SKU-1003", "Chelsea boots", 89.0),
    ("SKU-1004", "Rain jacket", 120.0),
    ("SKU-1005", "Cotton socks, 3 pack", 9.5),
    ("SKU-1006", "Wool scarf", 25.0),
    ("SKU-1007", "Slim chinos", 45.0),
    ("SKU-1008", "Canvas tote", 12.0),
    ("SKU-1009", "Leather belt", 29.0),
    ("SKU-1010", "Running trainers", 75.0),
];
#[rustfmt::skip]
const STORES: &[&str] = &[
    "Manchester Arndale", "Leeds Briggate", "Bristol Cabot", "Glasgow Buchanan", "London Oxford St",
];
const CALL_REASONS: &[&str] = &["delivery", "returns", "payment", "loyalty points", "complaint"];
const CHAT_TOPICS: &[&str] = &["sizing", "order status", "returns", "stock check"];
#[rustfmt::skip]
const CAMPAIGNS: &[&str] = &[
    "autumn-edit", "loyalty-double-points", "new-arrivals", "black-friday-preview", "black-friday", "gift-guide",
    "winter-sale", "last-order-dates",
];

/// The person's events, each with its time, in the order they were drawn, between `start`
/// and `end`. `tag` prefixes the message ids.
pub fn events_of(
    person: &Person,
    rng: Rng,
    tag: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, Event)> {
    let mut timeline = Timeline {
        person,
        rng,
        tag,
        start,
        end,
        drafts: Vec::new(),
    };
    timeline.draw(&campaigns(start));
    timeline.drafts
}

/// The brand's email campaigns: one a week.
fn campaigns(start: DateTime<Utc>) -> Vec<(&'static str, DateTime<Utc>)> {
    CAMPAIGNS
        .iter()
        .enumerate()
        .map(|(week, name)| {
            (
                *name,
                start + TimeDelta::days(3 + 7 * week as i64) + TimeDelta::hours(9),
            )
        })
        .collect()
}

/// Spellings of one phone number as different systems store it; identity normalises them.
fn spell_phone(e164: &str, rng: &mut Rng) -> String {
    let national = &e164[3..];
    match rng.below(4) {
        0 => e164.to_owned(),
        1 => format!("+44 {} {}", &national[..4], &national[4..]),
        2 => format!("+44 (0){} {}", &national[..4], &national[4..]),
        _ => format!("0044 {} {}", &national[..4], &national[4..]),
    }
}

/// An event under construction.
struct Touch(Event);

impl Touch {
    fn new(kind: EventType, channel: Channel) -> Self {
        Self(Event {
            r#type: kind as i32,
            context: Some(Context {
                channel: channel as i32,
                ..Context::default()
            }),
            ..Event::default()
        })
    }

    fn track(channel: Channel, name: &str) -> Self {
        let mut touch = Self::new(EventType::Track, channel);
        touch.0.event = name.to_owned();
        touch
    }

    fn page(name: &str) -> Self {
        let mut touch = Self::new(EventType::Page, Channel::Web);
        touch.0.name = name.to_owned();
        touch
    }

    fn screen(name: &str) -> Self {
        let mut touch = Self::new(EventType::Screen, Channel::App);
        touch.0.name = name.to_owned();
        touch
    }

    fn identify(channel: Channel) -> Self {
        Self::new(EventType::Identify, channel)
    }

    fn anonymous(mut self, id: &str) -> Self {
        self.0.anonymous_id = id.to_owned();
        self
    }

    fn user(mut self, id: Option<&String>) -> Self {
        if let Some(id) = id {
            self.0.user_id = id.clone();
        }
        self
    }

    fn id(mut self, kind: &str, value: &str) -> Self {
        self.0.identifiers.push(Identifier {
            kind: kind.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    fn properties(mut self, properties: serde_json::Value) -> Self {
        if let serde_json::Value::Object(map) = properties {
            self.0.properties = Some(RawStruct::from_json(&map));
        }
        self
    }

    fn traits(mut self, traits: serde_json::Value) -> Self {
        if let serde_json::Value::Object(map) = traits {
            self.0.traits = Some(RawStruct::from_json(&map));
        }
        self
    }

    fn campaign(mut self, name: &str, medium: &str) -> Self {
        if let Some(context) = self.0.context.as_mut() {
            context.campaign = Some(Campaign {
                name: name.to_owned(),
                source: "corvus-demo".to_owned(),
                medium: medium.to_owned(),
                ..Campaign::default()
            });
        }
        self
    }
}

/// One person's sixty days.
struct Timeline<'a> {
    person: &'a Person,
    rng: Rng,
    tag: &'a str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    drafts: Vec<(DateTime<Utc>, Event)>,
}

impl Timeline<'_> {
    fn push(&mut self, at: DateTime<Utc>, touch: Touch) {
        let at = at.min(self.end);
        let mut event = touch.0;
        event.message_id = format!("{}-{}-{}", self.tag, self.person.index, self.drafts.len());
        event.timestamp = Some(to_timestamp(at));
        self.drafts.push((at, event));
    }

    fn draw(&mut self, campaigns: &[(&'static str, DateTime<Utc>)]) {
        let email_consent = self.consents();
        self.web();
        self.app();
        self.email(campaigns, email_consent);
        self.sms();
        self.store();
        self.crm();
        self.call_centre();
        self.chat();
        self.survey();
    }

    /// The email address as a source spells it: mostly as stored, now and then capitalised.
    fn email_as_sent(&mut self) -> String {
        let email = &self.person.email;
        if self.rng.chance(0.2) {
            let mut chars = email.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        } else {
            email.clone()
        }
    }

    /// Traits as an identify event carries them; the name now and then misspelt.
    fn traits(&mut self) -> serde_json::Value {
        let p = self.person;
        let (first, last) = match &p.misspelt {
            Some((first, last)) if self.rng.chance(0.5) => (first.clone(), last.clone()),
            _ => (p.first_name.clone(), p.last_name.clone()),
        };
        json!({
            "first_name": first,
            "last_name": last,
            "date_of_birth": p.date_of_birth.format("%Y-%m-%d").to_string(),
            "postcode": p.postcode,
            "city": p.city,
        })
    }

    /// Marketing consent: email and SMS given early on, sometimes withdrawn later; a few
    /// people opt out of marketing on every channel. Returns when email marketing is allowed.
    fn consents(&mut self) -> (DateTime<Utc>, DateTime<Utc>) {
        let p = self.person;
        let given = self.rng.time_in(self.start, self.start + TimeDelta::days(10));
        let mut allowed = (given, self.end);
        let mut updates = vec![(given, "email", self.rng.chance(0.85))];
        if !updates[0].2 {
            allowed = (self.end, self.end);
        }
        if p.phone.is_some() {
            updates.push((given + TimeDelta::minutes(1), "sms", self.rng.chance(0.5)));
        }
        if self.rng.chance(0.08) {
            let withdrawn = self.rng.time_in(given, self.end);
            updates.push((withdrawn, "", false));
            allowed.1 = allowed.1.min(withdrawn);
        }
        for (at, channel, granted) in updates {
            let properties = json!({"purpose": "marketing", "channel": channel, "granted": granted});
            let touch = match &p.user_id {
                Some(user) => Touch::track(Channel::Web, "Consent Updated").user(Some(user)),
                None => {
                    let email = self.email_as_sent();
                    Touch::track(Channel::Email, "Consent Updated").id("email", &email)
                }
            };
            self.push(at, touch.properties(properties));
        }
        allowed
    }

    /// Browsing: anonymous until the person signs in on that browser.
    fn web(&mut self) {
        let p = self.person;
        let mut identified = false;
        for browser in &p.browsers {
            let first_visit = self.rng.time_in(self.start, self.start + TimeDelta::days(45));
            let login = (p.user_id.is_some() && self.rng.chance(0.85)).then(|| {
                self.rng
                    .time_in(first_visit + TimeDelta::hours(1), first_visit + TimeDelta::days(14))
            });
            let anonymous_until = login.unwrap_or(self.end);
            self.session(first_visit, browser, None);
            for _ in 0..self.rng.below(3) {
                let at = self.rng.time_in(first_visit, anonymous_until);
                self.session(at, browser, None);
            }
            let Some(login) = login else { continue };
            self.push(
                login,
                Touch::track(Channel::Web, "Signed In")
                    .anonymous(browser)
                    .user(p.user_id.as_ref()),
            );
            if !identified || self.rng.chance(0.3) {
                identified = true;
                let email = self.email_as_sent();
                let mut touch = Touch::identify(Channel::Web)
                    .anonymous(browser)
                    .user(p.user_id.as_ref())
                    .id("email", &email);
                if let Some(phone) = &p.phone
                    && self.rng.chance(0.6)
                {
                    touch = touch.id("phone", &spell_phone(phone, &mut self.rng));
                }
                if let Some(card) = &p.loyalty_card
                    && self.rng.chance(0.4)
                {
                    touch = touch.id("loyalty_card", card);
                }
                let traits = self.traits();
                self.push(login + TimeDelta::seconds(2), touch.traits(traits));
            }
            for _ in 0..self.rng.below(5) {
                let at = self.rng.time_in(login, self.end);
                self.session(at, browser, p.user_id.as_ref());
            }
        }
    }

    fn session(&mut self, at: DateTime<Utc>, browser: &str, user: Option<&String>) {
        let mut at = at;
        for _ in 0..self.rng.between(1, 5) {
            let page = *self.rng.pick(PAGES);
            self.push(at, Touch::page(page).anonymous(browser).user(user));
            at += TimeDelta::seconds(self.rng.between(10, 240) as i64);
        }
    }

    /// App sessions on the person's phones and on the household's tablet.
    fn app(&mut self) {
        let p = self.person;
        let devices = p.devices.iter().map(|d| (d, 2, 10));
        let tablet = p.shared_tablet.iter().map(|d| (d, 2, 6));
        for (device, fewest, most) in devices.chain(tablet) {
            let installed = self.rng.time_in(self.start, self.end - TimeDelta::days(7));
            for _ in 0..self.rng.between(fewest, most) {
                let mut at = self.rng.time_in(installed, self.end);
                for _ in 0..self.rng.between(1, 4) {
                    let screen = *self.rng.pick(SCREENS);
                    let touch = Touch::screen(screen).user(p.user_id.as_ref()).id("device_id", device);
                    self.push(at, touch);
                    at += TimeDelta::seconds(self.rng.between(5, 120) as i64);
                }
            }
        }
    }

    /// Campaign emails opened and clicked; a click lands on the website with the address.
    fn email(&mut self, campaigns: &[(&'static str, DateTime<Utc>)], allowed: (DateTime<Utc>, DateTime<Utc>)) {
        let p = self.person;
        for &(campaign, sent) in campaigns {
            if sent < allowed.0 || sent >= allowed.1 || !self.rng.chance(0.35) {
                continue;
            }
            let opened = sent + TimeDelta::minutes(self.rng.between(1, 48 * 60) as i64);
            let properties = json!({"campaign": campaign, "email_id": format!("{campaign}-{}", p.index)});
            let email = self.email_as_sent();
            let open = Touch::track(Channel::Email, "Email Opened")
                .id("email", &email)
                .properties(properties.clone());
            self.push(opened, open);
            if !self.rng.chance(0.3) {
                continue;
            }
            let clicked = opened + TimeDelta::seconds(self.rng.between(5, 600) as i64);
            let click = Touch::track(Channel::Email, "Email Link Clicked")
                .id("email", &email)
                .properties(properties);
            self.push(clicked, click);
            let browser = self.rng.pick(&p.browsers).clone();
            let landing = Touch::page("Product")
                .anonymous(&browser)
                .id("email", &email)
                .campaign(campaign, "email");
            self.push(clicked + TimeDelta::seconds(3), landing);
        }
    }

    fn sms(&mut self) {
        let p = self.person;
        let Some(phone) = &p.phone else { return };
        if !self.rng.chance(0.5) {
            return;
        }
        for _ in 0..self.rng.between(1, 3) {
            let at = self.rng.time_in(self.start + TimeDelta::days(7), self.end);
            let spelt = spell_phone(phone, &mut self.rng);
            let event = if self.rng.chance(0.3) {
                "SMS Link Clicked"
            } else {
                "SMS Delivered"
            };
            let touch = Touch::track(Channel::Sms, event)
                .id("phone", &spelt)
                .properties(json!({"campaign": "loyalty-double-points"}));
            self.push(at, touch);
        }
    }

    /// The loyalty card registered in store, then till receipts that carry it.
    fn store(&mut self) {
        let p = self.person;
        let Some(card) = &p.loyalty_card else { return };
        let registered = self.rng.time_in(self.start, self.start + TimeDelta::days(50));
        let mut touch = Touch::identify(Channel::Store).id("loyalty_card", card);
        if self.rng.chance(0.85) {
            let email = self.email_as_sent();
            touch = touch.id("email", &email);
        }
        let traits = self.traits();
        self.push(registered, touch.traits(traits));
        let store = *self.rng.pick(STORES);
        for receipt in 0..self.rng.below(7) {
            let at = self.rng.time_in(registered, self.end);
            let mut products = Vec::new();
            let mut revenue = 0.0;
            for _ in 0..self.rng.between(1, 4) {
                let (sku, name, price) = *self.rng.pick(PRODUCTS);
                let quantity = self.rng.between(1, 2);
                revenue += price * quantity as f64;
                products.push(json!({"sku": sku, "name": name, "price": price, "quantity": quantity}));
            }
            let mut touch = Touch::track(Channel::Store, "Order Completed").id("loyalty_card", card);
            // An e-receipt: the till asks for the email address.
            if self.rng.chance(0.2) {
                let email = self.email_as_sent();
                touch = touch.id("email", &email);
            }
            let properties = json!({
                "order_id": format!("{}-{}-{receipt}", self.tag, p.index),
                "revenue": revenue,
                "currency": "GBP",
                "store": store,
                "products": products,
            });
            self.push(at, touch.properties(properties));
        }
    }

    /// The CRM's record of the customer, synced once with everything it knows.
    fn crm(&mut self) {
        let p = self.person;
        let Some(crm) = &p.crm_id else { return };
        let at = self.rng.time_in(self.start, self.end);
        let mut touch = Touch::identify(Channel::Server).id("crm_id", crm).id("email", &p.email);
        touch = match &p.user_id {
            Some(user) => touch.user(Some(user)),
            None => touch,
        };
        if let Some(phone) = &p.phone {
            touch = touch.id("phone", &spell_phone(phone, &mut self.rng));
        }
        let traits = self.traits();
        self.push(at, touch.traits(traits));
    }

    fn call_centre(&mut self) {
        let p = self.person;
        let Some(phone) = &p.phone else { return };
        let likely = if p.crm_id.is_some() { 0.5 } else { 0.15 };
        if !self.rng.chance(likely) {
            return;
        }
        for _ in 0..self.rng.between(1, 2) {
            let at = self.rng.time_in(self.start, self.end);
            let spelt = spell_phone(phone, &mut self.rng);
            let mut touch = Touch::track(Channel::CallCenter, "Call Completed").id("phone", &spelt);
            match &p.crm_id {
                Some(crm) if self.rng.chance(0.8) => touch = touch.id("crm_id", crm),
                // The agent asks for the email address to find the order.
                None if self.rng.chance(0.5) => touch = touch.id("email", &p.email),
                _ => {}
            }
            let reason = *self.rng.pick(CALL_REASONS);
            let seconds = self.rng.between(60, 1200);
            self.push(at, touch.properties(json!({"reason": reason, "duration_s": seconds})));
        }
    }

    fn chat(&mut self) {
        if !self.rng.chance(0.15) {
            return;
        }
        for _ in 0..self.rng.between(1, 2) {
            let at = self.rng.time_in(self.start, self.end);
            let email = self.email_as_sent();
            let topic = *self.rng.pick(CHAT_TOPICS);
            let touch = Touch::track(Channel::Chat, "Chat Completed")
                .id("email", &email)
                .properties(json!({"topic": topic}));
            self.push(at, touch);
        }
    }

    fn survey(&mut self) {
        if !self.rng.chance(0.25) {
            return;
        }
        let at = self.rng.time_in(self.start + TimeDelta::days(14), self.end);
        // Net promoter scores lean high, with a tail of detractors.
        let nps = match self.rng.below(10) {
            0 => self.rng.below(6),
            1..=3 => self.rng.between(6, 8),
            _ => self.rng.between(9, 10),
        };
        let email = self.email_as_sent();
        let touch = Touch::track(Channel::Survey, "Survey Answered")
            .id("email", &email)
            .properties(json!({"survey": "post-purchase", "nps": nps}));
        self.push(at, touch);
    }
}
