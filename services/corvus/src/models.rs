//! `corvus models`: fit a workspace's model and show it, over gRPC.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use serde_json::{Map, Value, json};

use corvus::client::connect;

/// `--as-of`: a date (its end, UTC) or an RFC 3339 time.
pub fn parse_as_of(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let end = NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).expect("a valid time");
        return Ok(day.and_time(end).and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?}: expected a date (1997-09-30) or an RFC 3339 time"))
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn time_text(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.try_into().ok()?))
        .map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn sorted<V: Clone + Into<Value>>(map: &std::collections::HashMap<String, V>) -> Value {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), map[k].clone().into()))
            .collect::<Map<_, _>>(),
    )
}

/// The kind as the command line names it.
pub fn kind_of(name: &str) -> pb::ModelKind {
    match name {
        "rfm" => pb::ModelKind::Rfm,
        "engagement" => pb::ModelKind::Engagement,
        "affinity" => pb::ModelKind::Affinity,
        "segments" => pb::ModelKind::Segments,
        "propensity" => pb::ModelKind::Propensity,
        _ => pb::ModelKind::Clv,
    }
}

fn kind_name(kind: i32) -> &'static str {
    match pb::ModelKind::try_from(kind) {
        Ok(pb::ModelKind::Rfm) => "rfm",
        Ok(pb::ModelKind::Engagement) => "engagement",
        Ok(pb::ModelKind::Affinity) => "affinity",
        Ok(pb::ModelKind::Segments) => "segments",
        Ok(pb::ModelKind::Propensity) => "propensity",
        _ => "clv",
    }
}

/// The model as JSON: parameters by their usual names, log-likelihoods, data counts.
pub fn model_json(m: &pb::Model) -> Value {
    json!({
        "kind": kind_name(m.kind),
        "fitted_at": time_text(m.fitted_at.as_ref()),
        "as_of": time_text(m.as_of.as_ref()),
        "unit": m.unit,
        "parameters": sorted(&m.parameters),
        "log_likelihood": sorted(&m.log_likelihood),
        "counts": sorted(&m.counts),
        "diagnostics": sorted(&m.diagnostics),
        "clv_months": m.clv_months,
        "discount_rate": m.discount_rate,
    })
}

fn print_model(m: &pb::Model, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&model_json(m)).expect("JSON"));
        return;
    }
    if m.kind != pb::ModelKind::Clv as i32 {
        println!(
            "{} model as of {}",
            kind_name(m.kind),
            time_text(m.as_of.as_ref()).as_str().unwrap_or("?")
        );
        let mut names: Vec<&String> = m.parameters.keys().collect();
        names.sort();
        for name in names {
            println!("  {name:<20} {:.6}", m.parameters[name]);
        }
        let mut counts: Vec<(&String, &u64)> = m.counts.iter().collect();
        counts.sort();
        let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  from {}", counts.join(", "));
        let mut diagnostics: Vec<(&String, &f64)> = m.diagnostics.iter().collect();
        diagnostics.sort_by(|a, b| a.0.cmp(b.0));
        for (name, value) in diagnostics {
            println!("  {name:<28} {value:.4}");
        }
        return;
    }
    let p = |k: &str| m.parameters.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "CLV model as of {}, in {}s",
        time_text(m.as_of.as_ref()).as_str().unwrap_or("?"),
        m.unit
    );
    println!(
        "  BG/NBD       r {:.6}  alpha {:.6}  a {:.6}  b {:.6}  log-likelihood {:.4}",
        p("r"),
        p("alpha"),
        p("a"),
        p("b"),
        m.log_likelihood.get("bg_nbd").copied().unwrap_or(f64::NAN)
    );
    println!(
        "  Gamma-Gamma  p {:.6}  q {:.6}  v {:.6}  log-likelihood {:.4}",
        p("p"),
        p("q"),
        p("v"),
        m.log_likelihood.get("gamma_gamma").copied().unwrap_or(f64::NAN)
    );
    let count = |k: &str| m.counts.get(k).copied().unwrap_or(0);
    println!(
        "  from {} customers ({} repeat buyers, {} purchases); CLV over {} months at {} a month",
        count("customers"),
        count("repeat_buyers"),
        count("purchases"),
        m.clv_months,
        m.discount_rate
    );
}

pub struct Fit {
    pub kind: pb::ModelKind,
    pub as_of: Option<DateTime<Utc>>,
    pub unit: String,
    pub months: u32,
    pub discount_rate: f64,
    pub min_support: Option<f64>,
    pub min_confidence: Option<f64>,
    pub k: u32,
    pub restarts: u32,
    pub horizon_days: u32,
}

/// `corvus models fit clv`: the fit's stages on standard error, the model on standard
/// output.
pub async fn fit(endpoint: &str, key: &str, fit: Fit, as_json: bool) -> anyhow::Result<()> {
    let mut client = ScoringServiceClient::new(connect(endpoint, key).await?);
    let mut stream = client
        .fit_model(pb::FitModelRequest {
            kind: fit.kind as i32,
            as_of: fit.as_of.map(timestamp),
            unit: fit.unit,
            clv_months: fit.months,
            discount_rate: Some(fit.discount_rate),
            min_support: fit.min_support,
            min_confidence: fit.min_confidence,
            k: fit.k,
            restarts: fit.restarts,
            horizon_days: fit.horizon_days,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut model = None;
    while let Some(message) = stream.message().await.map_err(|s| anyhow::anyhow!("{}", s.message()))? {
        eprintln!("{:>4.0}%  {}", message.progress * 100.0, message.stage);
        model = message.model.or(model);
    }
    let model = model.ok_or_else(|| anyhow::anyhow!("the fit ended without a model"))?;
    print_model(&model, as_json);
    Ok(())
}

/// `corvus models get KIND`.
pub async fn get(endpoint: &str, key: &str, kind: pb::ModelKind, as_json: bool) -> anyhow::Result<()> {
    let mut client = ScoringServiceClient::new(connect(endpoint, key).await?);
    let model = client
        .get_model(pb::GetModelRequest { kind: kind as i32 })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .model
        .ok_or_else(|| anyhow::anyhow!("no model in the answer"))?;
    print_model(&model, as_json);
    Ok(())
}
