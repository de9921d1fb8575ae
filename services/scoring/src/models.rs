//! The workspace models scoring fits and keeps: what each is, as stored, and the fits.
//! Each fit reads what scoring holds as of a date and replaces the workspace's model of
//! its kind.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::StorageError;
use serde::{Deserialize, Serialize};

use crate::domain::affinity::{self, Rule, Suggestion};
use crate::domain::clv::{BgNbd, Customer, FitError, GammaGamma};
use crate::domain::engagement::{self, Prior};
use crate::domain::features::{Features, summary};
use crate::domain::rfm::{Rfm, RfmModel};
use crate::domain::segments::{self, Segmentation};
use crate::propensity::{PROPENSITY, PropensityFit};
use crate::service::{HeldModels, MODELS_RECHECK, Scoring, ScoringError};

/// A time unit of the CLV model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Day,
    Week,
    Month,
}

impl Unit {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "week" => Some(Self::Week),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    pub fn days(self) -> f64 {
        match self {
            Self::Day => 1.0,
            Self::Week => 7.0,
            Self::Month => 365.25 / 12.0,
        }
    }

    /// Units a month, as `lifetimes` counts them for a lifetime value.
    pub fn per_month(self) -> f64 {
        match self {
            Self::Day => 30.0,
            Self::Week => 4.345,
            Self::Month => 1.0,
        }
    }

    /// A year in this unit: the default horizon.
    pub fn year(self) -> f64 {
        match self {
            Self::Day => 365.0,
            Self::Week => 52.0,
            Self::Month => 12.0,
        }
    }
}

/// A workspace's fitted CLV model, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClvModel {
    pub bg_nbd: BgNbd,
    pub gamma_gamma: GammaGamma,
    pub fitted_at: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub unit: Unit,
    pub clv_months: u32,
    pub discount_rate: f64,
    pub bg_nbd_log_likelihood: f64,
    pub gamma_gamma_log_likelihood: f64,
    pub customers: u64,
    pub repeat_buyers: u64,
    pub purchases: u64,
    pub bg_nbd_iterations: u32,
    pub bg_nbd_gradient: f64,
    pub gamma_gamma_iterations: u32,
    pub gamma_gamma_gradient: f64,
}

pub const CLV: &str = "clv";
pub const RFM: &str = "rfm";
pub const ENGAGEMENT: &str = "engagement";
pub const AFFINITY: &str = "affinity";
pub const SEGMENTS: &str = "segments";

/// A workspace's segments, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentsFit {
    pub segmentation: Segmentation,
    pub as_of: DateTime<Utc>,
    pub fitted_at: DateTime<Utc>,
}

/// The least orders with products an affinity model is fitted from.
pub const MIN_AFFINITY_ORDERS: usize = 10;

/// A workspace's co-purchase rules, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityFit {
    pub rules: Vec<Rule>,
    pub orders: u64,
    pub products: u64,
    pub min_support: f64,
    pub min_confidence: f64,
    pub as_of: DateTime<Utc>,
    pub fitted_at: DateTime<Utc>,
}

/// The least customers RFM quintiles are taken over.
pub const MIN_RFM_CUSTOMERS: usize = 5;

/// A workspace's RFM quintiles, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfmFit {
    pub model: RfmModel,
    pub as_of: DateTime<Utc>,
    pub fitted_at: DateTime<Utc>,
    pub purchases: u64,
}

/// A workspace's engagement priors, as stored: a Beta prior per channel and the
/// engaging events per hour of the week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngagementFit {
    pub priors: BTreeMap<String, Prior>,
    pub hours: Vec<f64>,
    pub as_of: DateTime<Utc>,
    pub fitted_at: DateTime<Utc>,
    pub profiles: u64,
    pub engaging_events: u64,
}

/// A workspace's models, each absent before its first fit.
#[derive(Debug, Clone, Default)]
pub struct Models {
    pub clv: Option<ClvModel>,
    pub rfm: Option<RfmFit>,
    pub engagement: Option<EngagementFit>,
    pub affinity: Option<AffinityFit>,
    pub segments: Option<SegmentsFit>,
    pub propensity: Option<PropensityFit>,
}

/// A fitted model of any kind.
#[derive(Debug, Clone)]
pub enum Fitted {
    Clv(ClvModel),
    Rfm(RfmFit),
    Engagement(EngagementFit),
    Affinity(AffinityFit),
    Segments(SegmentsFit),
    Propensity(Box<PropensityFit>),
}
/// What a CLV fit is asked for.
#[derive(Debug, Clone, Copy)]
pub struct ClvFit {
    pub as_of: DateTime<Utc>,
    pub unit: Unit,
    pub clv_months: u32,
    pub discount_rate: f64,
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, json: &str) -> Result<T, StorageError> {
    serde_json::from_str(json).map_err(|e| StorageError::Internal(format!("the stored {kind} model: {e}")))
}

fn encode<T: Serialize>(model: &T) -> Result<String, StorageError> {
    serde_json::to_string(model).map_err(|e| StorageError::Internal(e.to_string()))
}

impl Scoring {
    /// The workspace's models. Their versions are asked of the store at most once every
    /// `MODELS_RECHECK`, and the models decoded again only when one has been saved since:
    /// a save through this process is seen at once, one through another replica within
    /// `MODELS_RECHECK`.
    pub async fn models(&self, ws: &WorkspaceId) -> Result<std::sync::Arc<Models>, ScoringError> {
        let now = std::time::Instant::now();
        let saves = {
            let cache = self.models_cache.lock().expect("models cache");
            if let Some(held) = cache.held.get(ws)
                && now.duration_since(held.checked) < MODELS_RECHECK
            {
                return Ok(held.models.clone());
            }
            cache.saves
        };
        let versions = self.store.model_versions(ws).await?;
        if let Some(held) = self.models_cache.lock().expect("models cache").held.get_mut(ws)
            && held.versions == versions
        {
            held.checked = now;
            return Ok(held.models.clone());
        }
        // A save between the two reads leaves newer models under older versions: the
        // next check decodes them again, never serves older ones. Models read across a
        // save through this process are not kept, so that the save is seen at once.
        let models = std::sync::Arc::new(self.decode_models(ws).await?);
        let mut cache = self.models_cache.lock().expect("models cache");
        if cache.saves == saves {
            let held = HeldModels {
                versions,
                models: models.clone(),
                checked: now,
            };
            cache.held.insert(ws.clone(), held);
        }
        Ok(models)
    }

    /// Saves a model and drops this process's copy of the workspace's models.
    pub(crate) async fn save_model(
        &self,
        ws: &WorkspaceId,
        kind: &str,
        json: &str,
        fitted_at: DateTime<Utc>,
    ) -> Result<(), ScoringError> {
        self.store.save_model(ws, kind, json, fitted_at).await?;
        {
            let mut cache = self.models_cache.lock().expect("models cache");
            cache.saves += 1;
            cache.held.remove(ws);
        }
        self.definitions_changed(ws).await
    }

    async fn decode_models(&self, ws: &WorkspaceId) -> Result<Models, ScoringError> {
        let mut models = Models::default();
        for (kind, json) in self.store.models(ws).await? {
            match kind.as_str() {
                CLV => models.clv = Some(decode(&kind, &json)?),
                RFM => models.rfm = Some(decode(&kind, &json)?),
                ENGAGEMENT => models.engagement = Some(decode(&kind, &json)?),
                AFFINITY => models.affinity = Some(decode(&kind, &json)?),
                SEGMENTS => models.segments = Some(decode(&kind, &json)?),
                PROPENSITY => models.propensity = Some(decode(&kind, &json)?),
                _ => {}
            }
        }
        Ok(models)
    }

    /// The workspace's model of a kind.
    pub async fn model(&self, ws: &WorkspaceId, kind: &str) -> Result<Option<Fitted>, ScoringError> {
        let Some(json) = self.store.model(ws, kind).await? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            CLV => Fitted::Clv(decode(kind, &json)?),
            RFM => Fitted::Rfm(decode(kind, &json)?),
            AFFINITY => Fitted::Affinity(decode(kind, &json)?),
            SEGMENTS => Fitted::Segments(decode(kind, &json)?),
            PROPENSITY => Fitted::Propensity(Box::new(decode(kind, &json)?)),
            _ => Fitted::Engagement(decode(kind, &json)?),
        }))
    }

    /// Each profile's features as of `as_of`, from every fact of the workspace.
    async fn every_profile(&self, ws: &WorkspaceId, as_of: DateTime<Utc>) -> Result<Vec<Features>, ScoringError> {
        let facts = self.store.workspace_facts(ws, as_of, false).await?;
        let mut profiles = Vec::new();
        let mut i = 0;
        while i < facts.len() {
            let profile = facts[i].0;
            let end = facts[i..]
                .iter()
                .position(|(p, _)| *p != profile)
                .map_or(facts.len(), |n| i + n);
            let dated: Vec<_> = facts[i..end].iter().map(|(_, d)| d.clone()).collect();
            profiles.push(Features::compute(&dated, as_of));
            i = end;
        }
        Ok(profiles)
    }

    /// Finds the workspace's needs-based segments among its profiles as of `as_of`,
    /// keeping the ids of the previous fit's segments where the centres pair up.
    pub async fn fit_segments(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        k: Option<usize>,
        restarts: usize,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<SegmentsFit, ScoringError> {
        progress("computing each profile's features", 0.0);
        let vectors: Vec<Vec<f64>> = self
            .every_profile(ws, as_of)
            .await?
            .iter()
            .map(|f| segments::vector(f, as_of))
            .collect();
        let previous = self.models(ws).await?.segments.as_ref().map(|f| f.segmentation.clone());
        progress(
            match k {
                Some(_) => "clustering",
                None => "clustering for each k from 2, and choosing by silhouette",
            },
            0.3,
        );
        let segmentation =
            tokio::task::spawn_blocking(move || segments::segment(&vectors, k, restarts, previous.as_ref()))
                .await
                .map_err(|e| StorageError::Internal(format!("the fit stopped: {e}")))?
                .map_err(|e| ScoringError::Precondition(e.to_string()))?;
        let fit = SegmentsFit {
            segmentation,
            as_of,
            fitted_at: Utc::now(),
        };
        progress("saving the model", 0.9);
        self.save_model(ws, SEGMENTS, &encode(&fit)?, fit.fitted_at).await?;
        Ok(fit)
    }

    /// Fits the workspace's co-purchase rules from the products of its orders up to
    /// `as_of`.
    pub async fn fit_affinity(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        min_support: f64,
        min_confidence: f64,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<AffinityFit, ScoringError> {
        progress("reading the orders", 0.0);
        let orders = self.store.workspace_facts(ws, as_of, true).await?;
        let baskets: Vec<std::collections::BTreeSet<String>> = orders
            .iter()
            .map(|(_, d)| {
                d.fact
                    .products
                    .iter()
                    .filter(|p| !p.id.is_empty())
                    .map(|p| p.id.clone())
                    .collect()
            })
            .filter(|basket: &std::collections::BTreeSet<String>| !basket.is_empty())
            .collect();
        if baskets.len() < MIN_AFFINITY_ORDERS {
            return Err(ScoringError::Precondition(format!(
                "the affinity model needs at least {MIN_AFFINITY_ORDERS} orders with products (products[].product_id or \
                 sku); the data holds {}",
                baskets.len()
            )));
        }
        progress("finding itemsets and rules", 0.3);
        let products = baskets.iter().flatten().collect::<std::collections::HashSet<_>>().len() as u64;
        let found = tokio::task::spawn_blocking({
            let baskets = baskets.clone();
            move || affinity::rules(&baskets, min_support, min_confidence)
        })
        .await
        .map_err(|e| StorageError::Internal(format!("the fit stopped: {e}")))?
        .map_err(|e| ScoringError::Precondition(e.to_string()))?;
        let fit = AffinityFit {
            rules: found,
            orders: baskets.len() as u64,
            products,
            min_support,
            min_confidence,
            as_of,
            fitted_at: Utc::now(),
        };
        progress("saving the model", 0.9);
        self.save_model(ws, AFFINITY, &encode(&fit)?, fit.fitted_at).await?;
        Ok(fit)
    }

    /// The products to suggest to a profile next, from the workspace's rules.
    pub async fn recommendations(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        limit: usize,
        include_owned: bool,
    ) -> Result<(ProfileId, Vec<Suggestion>), ScoringError> {
        let models = self.models(ws).await?;
        let Some(fit) = &models.affinity else {
            return Err(ScoringError::NotFound(
                "no affinity model has been fitted in this workspace; FitModel (MODEL_KIND_AFFINITY) fits one"
                    .to_owned(),
            ));
        };
        let (profile, facts) = self.store.survivor_facts(ws, profile).await?;
        if facts.is_empty() {
            return Err(ScoringError::NotFound(format!(
                "scoring holds no events of profile {profile}"
            )));
        }
        let owned = facts
            .iter()
            .flat_map(|d| {
                d.fact
                    .products
                    .iter()
                    .filter(|p| !p.id.is_empty())
                    .map(|p| p.id.clone())
            })
            .collect();
        Ok((profile, affinity::suggest(&fit.rules, &owned, include_owned, limit)))
    }

    /// Fits the workspace's RFM quintiles from its customers' purchases up to `as_of`.
    pub async fn fit_rfm(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<RfmFit, ScoringError> {
        progress("summarising purchases", 0.0);
        let purchases = self.store.purchases(ws, as_of).await?;
        let mut customers: HashMap<ProfileId, Rfm> = HashMap::new();
        for p in &purchases {
            let c = customers.entry(p.profile).or_insert(Rfm {
                recency_days: f64::INFINITY,
                frequency: 0.0,
                monetary: 0.0,
            });
            let days = (as_of - p.at).num_milliseconds() as f64 / 86_400_000.0;
            c.recency_days = c.recency_days.min(days);
            c.frequency += 1.0;
            c.monetary += p.revenue;
        }
        if customers.len() < MIN_RFM_CUSTOMERS {
            return Err(ScoringError::Precondition(format!(
                "RFM needs at least {MIN_RFM_CUSTOMERS} customers with a purchase; the data holds {}",
                customers.len()
            )));
        }
        progress("taking quintiles", 0.5);
        let customers: Vec<Rfm> = customers.into_values().collect();
        let model = RfmModel::fit(&customers).expect("customers");
        let fit = RfmFit {
            model,
            as_of,
            fitted_at: Utc::now(),
            purchases: purchases.len() as u64,
        };
        progress("saving the model", 0.9);
        self.save_model(ws, RFM, &encode(&fit)?, fit.fitted_at).await?;
        Ok(fit)
    }

    /// Fits the workspace's engagement priors from every profile's events up to
    /// `as_of`: a Beta prior per channel messages were sent on, and the engaging
    /// events per hour of the week.
    pub async fn fit_engagement(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<EngagementFit, ScoringError> {
        progress("computing each profile's engagement", 0.0);
        let every = self.every_profile(ws, as_of).await?;
        let mut channels: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut hours = vec![0.0; 168];
        for features in &every {
            for (channel, e) in &features.channels {
                channels
                    .entry(channel.clone())
                    .or_default()
                    .push(engagement::exposures(e));
            }
            for (total, count) in hours.iter_mut().zip(&features.hour_of_week) {
                *total += f64::from(*count);
            }
        }
        let profiles = every.len() as u64;
        let priors: BTreeMap<String, Prior> = channels
            .iter()
            .filter_map(|(channel, people)| Some((channel.clone(), engagement::fit_prior(people)?)))
            .collect();
        let engaging_events = hours.iter().sum::<f64>() as u64;
        if priors.is_empty() && engaging_events == 0 {
            return Err(ScoringError::Precondition(
                "the engagement model needs at least one message on a channel or one engaging event \
                 (an open, a click, a purchase, a page or screen view); the data holds none"
                    .to_owned(),
            ));
        }
        let fit = EngagementFit {
            priors,
            hours,
            as_of,
            fitted_at: Utc::now(),
            profiles,
            engaging_events,
        };
        progress("saving the model", 0.9);
        self.save_model(ws, ENGAGEMENT, &encode(&fit)?, fit.fitted_at).await?;
        Ok(fit)
    }

    /// The purchase summary of every customer of the workspace as of `as_of`.
    pub async fn customers(
        &self,
        ws: &WorkspaceId,
        as_of: DateTime<Utc>,
        unit: Unit,
    ) -> Result<(Vec<Customer>, u64), ScoringError> {
        let purchases = self.store.purchases(ws, as_of).await?;
        let count = purchases.len() as u64;
        let mut days: HashMap<ProfileId, BTreeMap<NaiveDate, f64>> = HashMap::new();
        for p in purchases {
            *days.entry(p.profile).or_default().entry(p.at.date_naive()).or_default() += p.revenue;
        }
        let end = as_of.date_naive();
        let customers = days.values().filter_map(|d| summary(d, end, unit.days())).collect();
        Ok((customers, count))
    }

    /// Fits the workspace's CLV model and keeps it; `progress` hears each stage.
    pub async fn fit_clv(
        &self,
        ws: &WorkspaceId,
        fit: ClvFit,
        mut progress: impl FnMut(&str, f64),
    ) -> Result<ClvModel, ScoringError> {
        progress("summarising purchases", 0.0);
        let (customers, purchases) = self.customers(ws, fit.as_of, fit.unit).await?;
        progress("fitting BG/NBD", 0.3);
        let fitted = tokio::task::spawn_blocking(move || {
            let bg = BgNbd::fit(&customers)?;
            let gg = GammaGamma::fit(&customers)?;
            Ok::<_, FitError>((bg, gg, customers))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("the fit stopped: {e}")))?;
        let (bg, gg, customers) = fitted.map_err(|e| ScoringError::Precondition(e.to_string()))?;
        progress("saving the model", 0.9);
        let model = ClvModel {
            bg_nbd: bg.model,
            gamma_gamma: gg.model,
            fitted_at: Utc::now(),
            as_of: fit.as_of,
            unit: fit.unit,
            clv_months: fit.clv_months,
            discount_rate: fit.discount_rate,
            bg_nbd_log_likelihood: bg.log_likelihood,
            gamma_gamma_log_likelihood: gg.log_likelihood,
            customers: customers.len() as u64,
            repeat_buyers: gg.customers as u64,
            purchases,
            bg_nbd_iterations: bg.iterations,
            bg_nbd_gradient: bg.gradient,
            gamma_gamma_iterations: gg.iterations,
            gamma_gamma_gradient: gg.gradient,
        };
        self.save_model(ws, CLV, &encode(&model)?, model.fitted_at).await?;
        Ok(model)
    }
}
