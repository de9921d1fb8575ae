//! What a decision is made of and against: the person's ledger (sends, spent budgets,
//! campaigns' states), the decision logged with its explanation, and what its
//! transaction writes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Outbound, State};

/// A send, as caps count it.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch {
    pub campaign: String,
    pub channel: String,
    pub at: DateTime<Utc>,
    /// Days since 1970-01-01 in the person's zone.
    pub local_day: i32,
}

/// What a person's decision is made against, read under the person's lock.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// The person's sends since the longest window looked at.
    pub touches: Vec<Touch>,
    /// Sends spent of the campaigns with a budget among those asked about.
    pub spent: HashMap<String, u64>,
    /// Every campaign's state and version now.
    pub states: HashMap<String, (State, u32)>,
}

/// A logged decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: Uuid,
    pub profile: ProfileId,
    pub campaign: String,
    pub campaign_version: u32,
    pub arm: String,
    pub action: String,
    pub products: Vec<String>,
    pub subject: String,
    pub body: String,
    /// Empty when nothing is sent.
    pub channel: String,
    pub send_at: DateTime<Utc>,
    pub policy: String,
    pub propensity: f64,
    pub propensity_draws: u32,
    pub placement: String,
    pub decided_at: DateTime<Utc>,
    pub segment: String,
    /// The share of people the campaign's design puts in the arm.
    #[serde(default)]
    pub arm_share: f64,
    pub explanation: Explanation,
    /// The outcome attributed to it (not in the JSON kept: the columns hold it).
    #[serde(skip)]
    pub outcome: Option<(String, DateTime<Utc>)>,
}

impl Decision {
    /// Whether it sends (the person is not held out).
    pub fn sends(&self) -> bool {
        !self.channel.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub eligible: Vec<Candidate>,
    pub blocked: Vec<Blocked>,
    pub timing: String,
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub campaign: String,
    pub action: String,
    pub priority: i32,
    pub expected_value: f64,
    pub propensity: f64,
    /// The evidence the policy drew from, so that the decision can be replayed.
    pub successes: f64,
    pub trials: f64,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Audience,
    Consent,
    Cap,
    QuietHours,
    Holdout,
    Budget,
    Channel,
    Priority,
    Control,
    /// Paused, ended or changed since the decision began.
    State,
    /// A scheduled send whose time had passed in the person's zone.
    Schedule,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub campaign: String,
    pub reason: Reason,
    pub detail: String,
}

/// What a decision writes: the decision, and when it sends, its touch and the budget it
/// spends (with the budget).
#[derive(Debug, Clone)]
pub struct Writes {
    pub decision: Decision,
    pub touch: Option<Touch>,
    pub spend: Option<u64>,
    pub send: Option<Outbound>,
}

/// How a decision's transaction ended.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// Nothing to write: nothing was eligible.
    Nothing(Explanation),
    Written(Box<Writes>),
    /// The campaign's budget was spent by another decision meanwhile: nothing written.
    BudgetSpent(String),
    /// The person was erased after they were read: nothing written.
    Erased,
}

/// A cell of the policy's evidence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cell {
    pub campaign: String,
    pub segment: String,
    pub action: String,
    pub channel: String,
}

/// Decides under the person's lock: from what the ledger says, the writes (or why none).
pub type Plan = dyn Fn(&Ledger) -> Result<Writes, Explanation> + Send + Sync;

/// A decision to record for a person: their ledger (touches since `since`, the spend of
/// `budgeted`, every campaign's state) is read and `plan` makes the writes of it.
pub struct DecideRequest {
    pub ws: WorkspaceId,
    pub profile: ProfileId,
    pub since: DateTime<Utc>,
    pub budgeted: Vec<String>,
    /// The campaigns the plan may choose, with the version it knows of each: a store
    /// that plans before it writes takes them as live and checks them as it writes.
    pub assumed: Vec<(String, u32)>,
    pub plan: Box<Plan>,
}
