//! A campaign's definition, as the API takes it and a campaign file holds it, and the
//! checks that need nothing but the definition. (That its audience or segment exists is
//! checked against the workspace by the service.)

use serde::{Deserialize, Serialize};

use super::template;
use super::timing::{LocalTime, zone};

/// The channels a campaign may name, as the API's `corvus.common.v1.Channel` without
/// its prefix, lowercase.
pub const CHANNELS: [&str; 11] = [
    "web",
    "app",
    "email",
    "sms",
    "push",
    "call_center",
    "chat",
    "store",
    "survey",
    "social",
    "server",
];

/// Arm names the service uses for people held out.
pub const HOLDOUT: &str = "holdout";
pub const CONTROL: &str = "control";
/// The one arm of a campaign that names none.
pub const DEFAULT_ARM: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub segment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    pub actions: Vec<Action>,
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consent_purposes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<Cap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arms: Vec<Arm>,
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub holdout: f64,
    #[serde(default)]
    pub goal: Goal,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_time_zone: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f(n: &f64) -> bool {
    *n == 0.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    Event {
        event: String,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        properties: std::collections::BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        unless: String,
    },
    Score {
        score: String,
        above: f64,
    },
    AudienceEntered(String),
    Schedule {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        days: Vec<u32>,
        at: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub name: String,
    #[serde(default = "message")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub products: u32,
    #[serde(default = "one")]
    pub value: f64,
}

fn message() -> String {
    "message".to_owned()
}

fn one() -> f64 {
    1.0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub limit: u32,
    /// Every channel when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_campaigns: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_days: Option<u32>,
}

/// How a cap's window runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    Rolling(chrono::Duration),
    CalendarDays(u32),
}

impl Cap {
    /// The window, once the cap is checked.
    pub fn window(&self) -> Window {
        match (self.rolling_seconds, self.calendar_days) {
            (Some(s), _) => Window::Rolling(chrono::Duration::seconds(s as i64)),
            (None, Some(d)) => Window::CalendarDays(d),
            (None, None) => Window::CalendarDays(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    #[serde(default = "default_goal_events")]
    pub events: Vec<String>,
    #[serde(default = "default_goal_window")]
    pub window_seconds: u64,
}

fn default_goal_events() -> Vec<String> {
    vec!["Order Completed".to_owned()]
}

fn default_goal_window() -> u64 {
    7 * 86_400
}

impl Default for Goal {
    fn default() -> Self {
        Self {
            events: default_goal_events(),
            window_seconds: default_goal_window(),
        }
    }
}

/// A definition that does not hold together: the field (as the API names it, under
/// `campaign.`) and why.
pub type Invalid = (String, String);

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    (format!("campaign.{}", field.into()), reason.into())
}

/// A name as campaigns, actions, arms and tags take it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a name: a lowercase letter, then lowercase letters, digits, _ or -, 64 at most"
        )),
    }
}

const MAX_WAIT_SECONDS: u64 = 30 * 86_400;
const MAX_GOAL_WINDOW: u64 = 90 * 86_400;
const MAX_CAP_SECONDS: u64 = 3_650 * 86_400;

impl Definition {
    /// Everything that can be checked without the workspace, with the first problem's
    /// field.
    pub fn check(&self) -> Result<(), Invalid> {
        check_name(&self.name).map_err(|e| bad("name", e))?;
        for (i, tag) in self.tags.iter().enumerate() {
            check_name(tag).map_err(|e| bad(format!("tags[{i}]"), e))?;
        }
        if !self.audience.is_empty() && !self.segment.is_empty() {
            return Err(bad("segment", "a campaign targets an audience or a segment, not both"));
        }
        if let Some(trigger) = &self.trigger {
            self.check_trigger(trigger)?;
            if matches!(trigger, Trigger::Schedule { .. }) && self.audience.is_empty() {
                return Err(bad(
                    "audience",
                    "a scheduled campaign sends to the members of an audience: name one",
                ));
            }
        }
        if self.actions.is_empty() {
            return Err(bad("actions", "a campaign needs at least one action"));
        }
        for (i, action) in self.actions.iter().enumerate() {
            let at = |f: &str| format!("actions[{i}].{f}");
            check_name(&action.name).map_err(|e| bad(at("name"), e))?;
            if self.actions[..i].iter().any(|a| a.name == action.name) {
                return Err(bad(at("name"), format!("{:?} names two actions", action.name)));
            }
            if !matches!(action.kind.as_str(), "message" | "offer") {
                return Err(bad(at("kind"), format!("{:?}: \"message\" or \"offer\"", action.kind)));
            }
            if action.products as usize > template::MAX_SLOTS {
                return Err(bad(
                    at("products"),
                    format!("at most {} product slots", template::MAX_SLOTS),
                ));
            }
            let slots = action.products as usize;
            template::check(&action.subject, slots).map_err(|e| bad(at("subject"), e))?;
            template::check(&action.body, slots).map_err(|e| bad(at("body"), e))?;
            if !(action.value.is_finite() && action.value > 0.0) {
                return Err(bad(at("value"), "a conversion's value is a positive number"));
            }
        }
        if self.channels.is_empty() {
            return Err(bad("channels", "a campaign needs at least one channel"));
        }
        for (i, channel) in self.channels.iter().enumerate() {
            check_channel(channel).map_err(|e| bad(format!("channels[{i}]"), e))?;
            if self.channels[..i].contains(channel) {
                return Err(bad(format!("channels[{i}]"), format!("{channel:?} is named twice")));
            }
        }
        for (i, purpose) in self.consent_purposes.iter().enumerate() {
            if purpose.trim().is_empty() {
                return Err(bad(format!("consent_purposes[{i}]"), "a purpose is not empty"));
            }
        }
        for (i, cap) in self.caps.iter().enumerate() {
            let at = |f: &str| format!("caps[{i}].{f}");
            if cap.limit == 0 {
                return Err(bad(at("limit"), "a cap allows at least one send"));
            }
            if !cap.channel.is_empty() {
                check_channel(&cap.channel).map_err(|e| bad(at("channel"), e))?;
            }
            match (cap.rolling_seconds, cap.calendar_days) {
                (Some(_), Some(_)) => return Err(bad(at("rolling"), "a rolling window or calendar days, not both")),
                (None, None) => return Err(bad(at("rolling"), "a cap needs a window: rolling or calendar_days")),
                (Some(s), None) if s == 0 || s > MAX_CAP_SECONDS => {
                    return Err(bad(at("rolling"), "a rolling window is from 1 second to 3,650 days"));
                }
                (None, Some(d)) if d == 0 || d > 3_650 => {
                    return Err(bad(at("calendar_days"), "calendar days are from 1 to 3,650"));
                }
                _ => {}
            }
        }
        if let Some(quiet) = &self.quiet_hours {
            let start = LocalTime::parse(&quiet.start).map_err(|e| bad("quiet_hours.start", e))?;
            let end = LocalTime::parse(&quiet.end).map_err(|e| bad("quiet_hours.end", e))?;
            if start == end {
                return Err(bad(
                    "quiet_hours.end",
                    "quiet hours that start and end together are empty",
                ));
            }
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(bad("holdout", "a share in [0, 1)"));
        }
        if !self.arms.is_empty() {
            let mut total = 0.0;
            for (i, arm) in self.arms.iter().enumerate() {
                let at = |f: &str| format!("arms[{i}].{f}");
                check_name(&arm.name).map_err(|e| bad(at("name"), e))?;
                if [HOLDOUT, CONTROL].contains(&arm.name.as_str()) {
                    return Err(bad(at("name"), format!("{:?} is reserved", arm.name)));
                }
                if self.arms[..i].iter().any(|a| a.name == arm.name) {
                    return Err(bad(at("name"), format!("{:?} names two arms", arm.name)));
                }
                if !(arm.weight.is_finite() && arm.weight > 0.0) {
                    return Err(bad(at("weight"), "a weight is a positive number"));
                }
                total += arm.weight;
                for (j, action) in arm.actions.iter().enumerate() {
                    if !self.actions.iter().any(|a| &a.name == action) {
                        return Err(bad(
                            format!("arms[{i}].actions[{j}]"),
                            format!("no action is named {action:?}"),
                        ));
                    }
                }
            }
            if (total - 1.0).abs() > 1e-9 {
                return Err(bad("arms", format!("the arms' weights add up to {total}, not 1")));
            }
        }
        if self.goal.events.is_empty() || self.goal.events.iter().any(|e| e.trim().is_empty()) {
            return Err(bad("goal.events", "at least one event name, none empty"));
        }
        if self.goal.window_seconds == 0 || self.goal.window_seconds > MAX_GOAL_WINDOW {
            return Err(bad("goal.window", "an attribution window is from 1 second to 90 days"));
        }
        if !self.default_time_zone.is_empty() {
            zone(&self.default_time_zone).map_err(|e| bad("default_time_zone", e))?;
        }
        Ok(())
    }

    fn check_trigger(&self, trigger: &Trigger) -> Result<(), Invalid> {
        match trigger {
            Trigger::Event {
                event,
                wait_seconds,
                unless,
                ..
            } => {
                if event.trim().is_empty() {
                    return Err(bad("trigger.event.event", "an event name"));
                }
                match (wait_seconds, unless.is_empty()) {
                    (Some(w), false) if *w == 0 || *w > MAX_WAIT_SECONDS => {
                        Err(bad("trigger.event.wait", "a wait is from 1 second to 30 days"))
                    }
                    (None, false) => Err(bad("trigger.event.wait", "`unless` needs a wait to check within")),
                    (Some(_), true) => Err(bad("trigger.event.unless", "a wait needs the event that cancels it")),
                    _ => Ok(()),
                }
            }
            Trigger::Score { score, above } => {
                if score.trim().is_empty() {
                    return Err(bad("trigger.score.score", "a score's name"));
                }
                match above.is_finite() {
                    true => Ok(()),
                    false => Err(bad("trigger.score.above", "a number")),
                }
            }
            Trigger::AudienceEntered(name) => match name.trim().is_empty() {
                true => Err(bad("trigger.audience_entered", "an audience's name")),
                false => Ok(()),
            },
            Trigger::Schedule { days, at } => {
                LocalTime::parse(at).map_err(|e| bad("trigger.schedule.at", e))?;
                match days.iter().position(|d| !(1..=7).contains(d)) {
                    Some(i) => Err(bad(format!("trigger.schedule.days[{i}]"), "1 (Monday) to 7 (Sunday)")),
                    None => Ok(()),
                }
            }
        }
    }

    /// The arms people are assigned to, with their weights (one, "default", when the
    /// definition names none).
    pub fn arms(&self) -> Vec<Arm> {
        match self.arms.is_empty() {
            true => vec![Arm {
                name: DEFAULT_ARM.to_owned(),
                weight: 1.0,
                actions: Vec::new(),
            }],
            false => self.arms.clone(),
        }
    }

    /// The share of people the design puts in `arm` (the holdout, the control group or
    /// an arm), given the workspace's control group: the control group takes its share,
    /// the holdout its share of the rest, each arm its weight of what remains.
    pub fn arm_share(&self, arm: &str, control_share: f64) -> f64 {
        let rest = 1.0 - control_share;
        match arm {
            CONTROL => control_share,
            HOLDOUT => rest * self.holdout,
            _ => {
                let arms = self.arms();
                let total: f64 = arms.iter().map(|a| a.weight).sum();
                let weight = arms.iter().find(|a| a.name == arm).map_or(0.0, |a| a.weight);
                rest * (1.0 - self.holdout) * weight / total
            }
        }
    }

    /// The actions the arm named may send (every action for an arm it does not name:
    /// the default, the holdout, the control group).
    pub fn actions_of(&self, arm: &str) -> Vec<&Action> {
        let only = self.arms.iter().find(|a| a.name == arm).map(|a| &a.actions);
        self.actions
            .iter()
            .filter(|a| only.is_none_or(|only| only.is_empty() || only.contains(&a.name)))
            .collect()
    }
}

fn check_channel(channel: &str) -> Result<(), String> {
    match CHANNELS.contains(&channel) {
        true => Ok(()),
        false => Err(format!("{channel:?} is not a channel: one of {}", CHANNELS.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn campaign() -> Definition {
        serde_json::from_value(serde_json::json!({
            "name": "winback",
            "actions": [{"name": "mail", "subject": "Hi {{traits.first_name|there}}"}],
            "channels": ["email", "sms"],
            "caps": [{"limit": 1, "calendar_days": 1}],
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "arms": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}],
        }))
        .unwrap()
    }

    fn field_of(def: &Definition) -> String {
        def.check().unwrap_err().0
    }

    #[test]
    fn arm_shares_split_everyone_as_designed() {
        let mut c = campaign();
        c.holdout = 0.2;
        (c.arms[0].weight, c.arms[1].weight) = (0.25, 0.75);
        // A control group of 10 %: the holdout takes 20 % of the other 90 %, and the arms
        // split the 72 % left a quarter to three quarters.
        let shares: Vec<f64> = [CONTROL, HOLDOUT, "a", "b"]
            .iter()
            .map(|a| c.arm_share(a, 0.1))
            .collect();
        let want = [0.1, 0.18, 0.18, 0.54];
        for (got, want) in shares.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{shares:?}");
        }
        assert_eq!(c.arm_share("unknown", 0.1), 0.0);
    }

    #[test]
    fn a_whole_definition_passes() {
        campaign().check().unwrap();
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut c = campaign();
        c.arms[1].weight = 0.4;
        assert_eq!(field_of(&c), "campaign.arms");
        let mut c = campaign();
        c.caps[0].calendar_days = None;
        assert_eq!(field_of(&c), "campaign.caps[0].rolling");
        let mut c = campaign();
        c.default_time_zone = "Mars/Olympus".to_owned();
        assert_eq!(field_of(&c), "campaign.default_time_zone");
        let mut c = campaign();
        c.actions[0].body = "{{email}}".to_owned();
        assert_eq!(field_of(&c), "campaign.actions[0].body");
        let mut c = campaign();
        c.channels.push("fax".to_owned());
        assert_eq!(field_of(&c), "campaign.channels[2]");
        let mut c = campaign();
        c.arms[0].name = "holdout".to_owned();
        assert_eq!(field_of(&c), "campaign.arms[0].name");
        let mut c = campaign();
        c.quiet_hours.as_mut().unwrap().end = "25:00".to_owned();
        assert_eq!(field_of(&c), "campaign.quiet_hours.end");
        let mut c = campaign();
        c.holdout = 1.0;
        assert_eq!(field_of(&c), "campaign.holdout");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<Definition>(serde_json::json!({
            "name": "x", "actions": [], "channels": [], "priorty": 3
        }))
        .unwrap_err();
        assert!(err.to_string().contains("priorty"), "{err}");
    }
}
