//! `corvus campaigns`: campaigns as code. `apply FILE` makes the workspace hold the
//! file's campaigns (idempotent: it shows what it will do, checks every definition before
//! changing anything, creates new campaigns as drafts, gives changed ones a new version,
//! and leaves campaigns the file does not name alone); `export` writes the workspace's
//! campaigns in the same format; `list`, `state` and `pause` over gRPC.

use std::collections::BTreeSet;
use std::path::Path;

use corvus_orchestration::domain::campaign::Definition;
use corvus_orchestration::grpc::{campaign_of, definition_of};
use corvus_proto::orchestration::v1 as pb;
use corvus_proto::orchestration::v1::orchestration_service_client::OrchestrationServiceClient;
use serde::{Deserialize, Serialize};

use corvus::client::connect;

/// The file `apply` takes and `export` writes.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaigns {
    #[serde(default)]
    pub campaigns: Vec<Definition>,
}

/// A campaign as the workspace holds it: its current version's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub definition: Definition,
    pub version: u32,
    pub state: pb::CampaignState,
}

/// What `apply` does to one campaign of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Created, as a draft at version 1.
    Create,
    Unchanged,
    /// A new version of the definition, refused if the campaign is no longer at
    /// `from` (someone changed it since it was read). Its state is kept.
    Update {
        from: u32,
    },
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<(String, Step)>,
    /// The file's campaigns that are drafts once applied, which `--launch` sets live.
    pub drafts: Vec<String>,
    /// Changes to ended campaigns, which cannot be made.
    pub refused: Vec<String>,
}

impl Plan {
    fn count(&self, wanted: fn(&Step) -> bool) -> usize {
        self.steps.iter().filter(|(_, s)| wanted(s)).count()
    }

    fn created(&self) -> usize {
        self.count(|s| *s == Step::Create)
    }

    fn updated(&self) -> usize {
        self.count(|s| matches!(s, Step::Update { .. }))
    }

    fn unchanged(&self) -> usize {
        self.count(|s| *s == Step::Unchanged)
    }

    fn print(&self) {
        for (name, step) in &self.steps {
            match step {
                Step::Create => println!("+ {name}"),
                Step::Unchanged => println!("= {name}"),
                Step::Update { .. } if self.refused.contains(name) => println!("~ {name} (ended: cannot be changed)"),
                Step::Update { from } => println!("~ {name} (version {from} to {})", from + 1),
            }
        }
    }
}

/// Every definition of the file checked as the server checks it (but for what it names
/// in the workspace: audiences, segments), with no name twice; then as the API would hold
/// it, so that it compares equal to what `held` reads back.
pub fn checked(file: &Campaigns) -> anyhow::Result<Vec<Definition>> {
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, def) in file.campaigns.iter().enumerate() {
        if let Err((field, reason)) = def.check() {
            problems.push(format!("campaigns[{i}] ({}): {field}: {reason}", def.name));
        }
        if !names.insert(def.name.as_str()) {
            problems.push(format!("campaigns[{i}]: campaign {:?} is named twice", def.name));
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{}\nnothing changed: {} problem(s) in the file",
        problems.join("\n"),
        problems.len()
    );
    file.campaigns
        .iter()
        .enumerate()
        .map(|(i, def)| {
            definition_of(&campaign_of(def))
                .map_err(|s| anyhow::anyhow!("campaigns[{i}] ({}): {}", def.name, s.message()))
        })
        .collect()
}

/// What applying the (checked) `file` over `held` does, or why it cannot be applied: a
/// change to an ended campaign. Nothing is changed on an error.
pub fn plan(file: &[Definition], held: &[Held]) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for def in file {
        let (step, draft) = match held.iter().find(|h| h.definition.name == def.name) {
            None => (Step::Create, true),
            Some(h) => {
                let step = match h.definition == *def {
                    true => Step::Unchanged,
                    false => Step::Update { from: h.version },
                };
                if h.state == pb::CampaignState::Ended && step != Step::Unchanged {
                    plan.refused.push(def.name.clone());
                }
                (step, h.state == pb::CampaignState::Draft)
            }
        };
        plan.steps.push((def.name.clone(), step));
        if draft {
            plan.drafts.push(def.name.clone());
        }
    }
    if !plan.refused.is_empty() {
        plan.print();
        let names: Vec<String> = plan.refused.iter().map(|n| format!("{n:?}")).collect();
        anyhow::bail!(
            "{} {} ended, and an ended campaign cannot be changed: give the file's definition a new \
             name, or leave it as it is held (`export` writes it); nothing changed",
            match names.len() {
                1 => "campaign",
                _ => "campaigns",
            },
            match names.len() {
                1 => format!("{} is", names[0]),
                _ => format!("{} are", names.join(", ")),
            },
        );
    }
    Ok(plan)
}

type Client = OrchestrationServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, corvus::client::BearerAuth>,
>;

async fn client(endpoint: &str, key: &str) -> anyhow::Result<Client> {
    Ok(OrchestrationServiceClient::new(connect(endpoint, key).await?))
}

/// The campaigns a workspace holds, as the API gives them.
async fn held(client: &mut Client) -> anyhow::Result<Vec<Held>> {
    client
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .map_err(status("listing campaigns".into()))?
        .into_inner()
        .campaigns
        .iter()
        .map(|c| {
            Ok(Held {
                definition: definition_of(c).map_err(|s| anyhow::anyhow!("campaign {:?}: {}", c.name, s.message()))?,
                version: c.version,
                state: c.state(),
            })
        })
        .collect()
}

fn read(file: &Path) -> anyhow::Result<Campaigns> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn status(what: String) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |s| anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

fn state_name(state: pb::CampaignState) -> &'static str {
    match state {
        pb::CampaignState::Unspecified => "unspecified",
        pb::CampaignState::Draft => "draft",
        pb::CampaignState::Live => "live",
        pb::CampaignState::Paused => "paused",
        pb::CampaignState::Ended => "ended",
    }
}

/// A state as `corvus campaigns state` takes it.
pub fn parse_state(text: &str) -> Result<pb::CampaignState, String> {
    match text {
        "live" => Ok(pb::CampaignState::Live),
        "paused" => Ok(pb::CampaignState::Paused),
        "ended" => Ok(pb::CampaignState::Ended),
        other => Err(format!("{other:?}: live, paused or ended")),
    }
}

pub async fn apply(endpoint: &str, key: &str, file: &Path, dry_run: bool, launch: bool) -> anyhow::Result<()> {
    let wanted = checked(&read(file)?)?;
    let mut client = client(endpoint, key).await?;
    let plan = plan(&wanted, &held(&mut client).await?)?;
    plan.print();
    let (created, updated, unchanged) = (plan.created(), plan.updated(), plan.unchanged());
    if dry_run {
        let launched = match launch && !plan.drafts.is_empty() {
            true => format!(", launch {}", plan.drafts.join(", ")),
            false => String::new(),
        };
        println!("dry run: would create {created}, update {updated}{launched}; {unchanged} unchanged; nothing changed");
        return Ok(());
    }
    let mut applied: Vec<&str> = Vec::new();
    for (def, (name, step)) in wanted.iter().zip(&plan.steps) {
        let result = match step {
            Step::Unchanged => continue,
            Step::Create => client
                .create_campaign(pb::CreateCampaignRequest {
                    campaign: Some(campaign_of(def)),
                })
                .await
                .map(drop),
            Step::Update { from } => client
                .update_campaign(pb::UpdateCampaignRequest {
                    campaign: Some(campaign_of(def)),
                    expected_version: Some(*from),
                })
                .await
                .map(drop),
        };
        if let Err(s) = result {
            // A campaign changed, or ended, since it was read.
            let again = match s.code() {
                tonic::Code::FailedPrecondition => {
                    "; it changed since it was read: apply again to see the plan against it"
                }
                _ => "",
            };
            let before = match applied.is_empty() {
                true => "nothing changed".to_owned(),
                false => format!("applied before it: {}; the rest not", applied.join(", ")),
            };
            anyhow::bail!("campaign {name:?}: {} ({:?}){again}\n{before}", s.message(), s.code());
        }
        applied.push(name);
    }
    println!("applied: {created} created, {updated} updated, {unchanged} unchanged");
    if launch {
        for name in &plan.drafts {
            client
                .set_campaign_state(pb::SetCampaignStateRequest {
                    name: name.clone(),
                    state: pb::CampaignState::Live as i32,
                })
                .await
                .map_err(status(format!("launching campaign {name:?}")))?;
            println!("live {name}");
        }
    }
    Ok(())
}

pub async fn export(endpoint: &str, key: &str) -> anyhow::Result<()> {
    let held = held(&mut client(endpoint, key).await?).await?;
    let file = Campaigns {
        campaigns: held.into_iter().map(|h| h.definition).collect(),
    };
    println!("{}", serde_json::to_string_pretty(&file)?);
    Ok(())
}

pub async fn list(endpoint: &str, key: &str) -> anyhow::Result<()> {
    let mut client = client(endpoint, key).await?;
    let mut rows = vec![["NAME", "STATE", "VERSION", "PRIORITY", "CHANNELS", "TAGS"].map(String::from)];
    for c in held(&mut client).await? {
        let d = &c.definition;
        rows.push([
            d.name.clone(),
            state_name(c.state).to_owned(),
            c.version.to_string(),
            d.priority.to_string(),
            d.channels.join(","),
            d.tags.join(","),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn set_state(endpoint: &str, key: &str, name: &str, state: pb::CampaignState) -> anyhow::Result<()> {
    let campaign = client(endpoint, key)
        .await?
        .set_campaign_state(pb::SetCampaignStateRequest {
            name: name.into(),
            state: state as i32,
        })
        .await
        .map_err(status(format!("campaign {name:?}")))?
        .into_inner()
        .campaign
        .unwrap_or_default();
    println!(
        "{name} is {} (version {})",
        state_name(campaign.state()),
        campaign.version
    );
    Ok(())
}

pub async fn pause(endpoint: &str, key: &str, tag: &str) -> anyhow::Result<()> {
    let paused = client(endpoint, key)
        .await?
        .pause_campaigns(pb::PauseCampaignsRequest { tag: tag.into() })
        .await
        .map_err(status(format!("pausing campaigns tagged {tag:?}")))?
        .into_inner()
        .paused;
    if paused.is_empty() {
        println!("no live campaign is tagged {tag}");
    }
    for name in paused {
        println!("paused {name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn campaign(name: &str, priority: i32) -> serde_json::Value {
        json!({"name": name, "tags": ["spring"],
               "actions": [{"name": "hello", "subject": "Hi {{traits.first_name|there}}"}],
               "channels": ["email", "sms"], "priority": priority,
               "arms": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}], "holdout": 0.1})
    }

    fn file(campaigns: Vec<serde_json::Value>) -> Vec<Definition> {
        checked(&serde_json::from_value(json!({ "campaigns": campaigns })).unwrap()).unwrap()
    }

    fn held(defs: Vec<Definition>, state: pb::CampaignState, version: u32) -> Vec<Held> {
        defs.into_iter()
            .map(|definition| Held {
                definition,
                version,
                state,
            })
            .collect()
    }

    #[test]
    fn a_plan_creates_keeps_and_updates_from_the_version_held() {
        let was = held(
            file(vec![campaign("a", 1), campaign("b", 1)]),
            pb::CampaignState::Live,
            3,
        );
        let planned = plan(&file(vec![campaign("a", 1), campaign("b", 2), campaign("c", 1)]), &was).unwrap();
        assert_eq!(
            planned,
            Plan {
                steps: vec![
                    ("a".into(), Step::Unchanged),
                    ("b".into(), Step::Update { from: 3 }),
                    ("c".into(), Step::Create)
                ],
                drafts: vec!["c".into()],
                refused: vec![],
            }
        );
        // What is held, applied again, changes nothing.
        let defs: Vec<Definition> = was.iter().map(|h| h.definition.clone()).collect();
        assert_eq!(plan(&defs, &was).unwrap().unchanged(), 2);
        // The defaults a file may leave out compare equal to what the API gives back.
        let sparse = file(vec![
            json!({"name": "a", "actions": [{"name": "x"}], "channels": ["web"]}),
        ]);
        let pb = campaign_of(&sparse[0]);
        assert_eq!(definition_of(&pb).unwrap(), sparse[0]);
    }

    #[test]
    fn an_ended_campaign_is_not_changed() {
        let was = held(file(vec![campaign("a", 1)]), pb::CampaignState::Ended, 1);
        assert!(plan(&file(vec![campaign("a", 1)]), &was).is_ok(), "unchanged is fine");
        let err = plan(&file(vec![campaign("a", 2)]), &was).unwrap_err().to_string();
        assert!(
            err.contains("campaign \"a\" is ended") && err.contains("nothing changed"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_of_the_file_is_refused_before_anything_changes() {
        let mut weights = campaign("b", 1);
        weights["arms"][1]["weight"] = json!(0.4);
        let file: Campaigns =
            serde_json::from_value(json!({"campaigns": [campaign("a", 1), weights, campaign("a", 2)]})).unwrap();
        let err = checked(&file).unwrap_err().to_string();
        assert!(
            err.contains("campaigns[1] (b): campaign.arms: the arms' weights add up to 0.9"),
            "{err}"
        );
        assert!(err.contains("campaigns[2]: campaign \"a\" is named twice"), "{err}");
        let typo = serde_json::from_value::<Campaigns>(json!({"campaign": []})).unwrap_err();
        assert!(typo.to_string().contains("unknown field `campaign`"), "{typo}");
    }

    #[test]
    fn a_table_lines_up() {
        let rows = [
            ["NAME", "STATE"].map(String::from),
            ["welcome", "live"].map(String::from),
        ];
        assert_eq!(table(&rows), "NAME     STATE\nwelcome  live\n");
    }
}
