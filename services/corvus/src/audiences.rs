//! `corvus audiences`: computed traits and audiences as code. `apply FILE` makes the
//! workspace hold the file's definitions (idempotent: it shows what it will do, checks
//! every definition before changing anything, and leaves definitions the file does not
//! name alone); `export` writes the workspace's definitions in the same format; `list`,
//! `delete` and `watch` over gRPC.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use corvus_scoring::domain::audiences::{Condition, Field, Known, check_name, check_trait};
use corvus_scoring::domain::traits::ComputedTrait;
use corvus_scoring::grpc::audiences::{condition_from, condition_message, trait_from, trait_message};
use serde::{Deserialize, Serialize};

use corvus::client::connect;

/// The file `apply` takes and `export` writes.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    #[serde(default)]
    pub computed_traits: Vec<ComputedTrait>,
    #[serde(default)]
    pub audiences: Vec<AudienceDefinition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub definition: Condition,
}

/// What `apply` does to one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Unchanged,
    /// Deleted and created again: an audience's members are found again and its history
    /// of entries and exits starts over. An audience that refers to one replaced, or
    /// compares a computed trait replaced, is replaced with it.
    Replace,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub traits: Vec<(String, Step)>,
    pub audiences: Vec<(String, Step)>,
}

impl Plan {
    fn changes(&self) -> impl Iterator<Item = (&'static str, &str, Step)> {
        let traits = self.traits.iter().map(|(n, s)| ("computed trait", n.as_str(), *s));
        let audiences = self.audiences.iter().map(|(n, s)| ("audience", n.as_str(), *s));
        traits.chain(audiences)
    }

    fn count(&self, step: Step) -> usize {
        self.changes().filter(|(_, _, s)| *s == step).count()
    }

    fn print(&self) {
        for (kind, name, step) in self.changes() {
            let mark = match step {
                Step::Create => "+",
                Step::Unchanged => "=",
                Step::Replace => "~",
            };
            println!("{mark} {kind} {name}");
        }
    }
}

/// The definitions a workspace holds, as the API gives them.
async fn held(client: &mut Client) -> anyhow::Result<Definitions> {
    let computed_traits = held_traits(client).await?;
    let audiences = held_audiences(client).await?;
    Ok(Definitions {
        computed_traits,
        audiences: audiences
            .iter()
            .map(|a| {
                Ok(AudienceDefinition {
                    name: a.name.clone(),
                    description: a.description.clone(),
                    definition: condition_from("definition", a.definition.as_ref(), 0)
                        .map_err(|s| anyhow::anyhow!("{}", s.message()))?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

async fn held_traits(client: &mut Client) -> anyhow::Result<Vec<ComputedTrait>> {
    client
        .list_computed_traits(pb::ListComputedTraitsRequest {})
        .await?
        .into_inner()
        .computed_traits
        .iter()
        .map(|t| trait_from(Some(t)).map_err(|s| anyhow::anyhow!("{}", s.message())))
        .collect()
}

async fn held_audiences(client: &mut Client) -> anyhow::Result<Vec<pb::Audience>> {
    Ok(client
        .list_audiences(pb::ListAudiencesRequest {})
        .await?
        .into_inner()
        .audiences)
}

/// The file's definitions as the API would hold them (numbers as it keeps them, say),
/// so that they compare equal to what `held` reads back.
fn as_held(file: &Definitions) -> anyhow::Result<Definitions> {
    let epoch = chrono::DateTime::UNIX_EPOCH;
    Ok(Definitions {
        computed_traits: file
            .computed_traits
            .iter()
            .enumerate()
            .map(|(i, t)| {
                trait_from(Some(&trait_message(t, epoch)))
                    .map_err(|s| anyhow::anyhow!("computed_traits[{i}] ({}): {}", t.name, s.message()))
            })
            .collect::<anyhow::Result<_>>()?,
        audiences: file
            .audiences
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let definition = condition_from("definition", Some(&condition_message(&a.definition)), 0)
                    .map_err(|s| anyhow::anyhow!("audiences[{i}] ({}): {}", a.name, s.message()))?;
                Ok(AudienceDefinition {
                    definition,
                    ..a.clone()
                })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// Each wanted definition's step against those held; a name twice is an error.
fn steps<T: PartialEq>(
    kind: &str,
    wanted: &[T],
    held: &[T],
    name: impl Fn(&T) -> &String,
) -> anyhow::Result<Vec<(String, Step)>> {
    let mut names = BTreeSet::new();
    wanted
        .iter()
        .map(|w| {
            anyhow::ensure!(names.insert(name(w)), "{kind} {:?} is named twice", name(w));
            let step = match held.iter().find(|h| name(h) == name(w)) {
                None => Step::Create,
                Some(h) if h == w => Step::Unchanged,
                Some(_) => Step::Replace,
            };
            Ok((name(w).clone(), step))
        })
        .collect()
}

/// What applying `file` over `held` does, or why it cannot be applied: a definition the
/// server would refuse, a name twice, a change without `replace`, or a replacement that
/// a definition the file leaves alone depends on. Nothing is changed on an error.
pub fn plan(file: &Definitions, held: &Definitions, replace: bool) -> anyhow::Result<Plan> {
    let traits = steps("computed trait", &file.computed_traits, &held.computed_traits, |t| {
        &t.name
    })?;
    let audiences = steps("audience", &file.audiences, &held.audiences, |a| &a.name)?;
    let mut plan = Plan { traits, audiences };
    // An audience that refers to one replaced, or compares a computed trait replaced, is
    // replaced with it: neither can be deleted while it stands.
    let is_replaced = |list: &[(String, Step)], name: &str| list.iter().any(|(n, s)| n == name && *s == Step::Replace);
    loop {
        let dependent = file.audiences.iter().position(|a| {
            !is_replaced(&plan.audiences, &a.name)
                && held.audiences.iter().any(|h| h.name == a.name)
                && (a.definition.audiences().iter().any(|r| is_replaced(&plan.audiences, r))
                    || a.definition
                        .fields(&HashMap::new())
                        .iter()
                        .any(|f| matches!(f, Field::Computed(t) if is_replaced(&plan.traits, t))))
        });
        match dependent {
            Some(i) => plan.audiences[i].1 = Step::Replace,
            None => break,
        }
    }
    let replaced = plan.count(Step::Replace);
    if replaced > 0 && !replace {
        plan.print();
        anyhow::bail!(
            "{replaced} definition(s) differ from those held (~); --replace deletes and creates them again \
             (an audience's members are found again and its history starts over)"
        );
    }

    // Every definition checked against the workspace as it will be.
    let mut traits: HashMap<String, ComputedTrait> = held
        .computed_traits
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    traits.extend(file.computed_traits.iter().map(|t| (t.name.clone(), t.clone())));
    let mut audiences: HashMap<String, Condition> = held
        .audiences
        .iter()
        .map(|a| (a.name.clone(), a.definition.clone()))
        .collect();
    audiences.extend(file.audiences.iter().map(|a| (a.name.clone(), a.definition.clone())));
    for (i, t) in file.computed_traits.iter().enumerate() {
        check_trait(t).map_err(|e| anyhow::anyhow!("computed_traits[{i}] ({}).{}: {}", t.name, e.path, e.reason))?;
    }
    let known = Known {
        traits: &traits,
        audiences: &audiences,
    };
    for (i, a) in file.audiences.iter().enumerate() {
        check_name("name", &a.name)
            .map_err(|e| anyhow::anyhow!("audiences[{i}] ({}).{}: {}", a.name, e.path, e.reason))?;
        a.definition
            .check(&a.name, &known)
            .map_err(|e| anyhow::anyhow!("audiences[{i}] ({}).{}: {}", a.name, e.path, e.reason))?;
    }

    // A replacement deletes first: what the file leaves alone must not depend on it.
    for h in held
        .audiences
        .iter()
        .filter(|h| !file.audiences.iter().any(|a| a.name == h.name))
    {
        for field in h.definition.fields(&HashMap::new()) {
            if let Field::Computed(name) = field {
                anyhow::ensure!(
                    !is_replaced(&plan.traits, &name),
                    "audience {:?} compares computed.{name}, which would be replaced: put it in the file too",
                    h.name
                );
            }
        }
        for name in h.definition.audiences() {
            anyhow::ensure!(
                !is_replaced(&plan.audiences, name),
                "audience {:?} refers to audience {name:?}, which would be replaced: put it in the file too",
                h.name
            );
        }
    }
    Ok(plan)
}

/// Audiences in an order where each comes after those it refers to (`referred_first`)
/// or before them; the checks above ruled out cycles.
fn ordered<'a>(names: &[&'a str], definitions: &HashMap<&str, &'a Condition>, referred_first: bool) -> Vec<&'a str> {
    let mut left: Vec<&str> = names.to_vec();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = |name: &str| {
            let waits_on = |other: &str| {
                if referred_first {
                    definitions[name].audiences().contains(&other)
                } else {
                    definitions[other].audiences().contains(&name)
                }
            };
            !left.iter().any(|other| *other != name && waits_on(other))
        };
        let Some(i) = left.iter().position(|n| ready(n)) else {
            out.append(&mut left);
            break;
        };
        out.push(left.remove(i));
    }
    out
}

type Client = ScoringServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, corvus::client::BearerAuth>,
>;

async fn client(endpoint: &str, key: &str) -> anyhow::Result<Client> {
    Ok(ScoringServiceClient::new(connect(endpoint, key).await?))
}

fn read(file: &Path) -> anyhow::Result<Definitions> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn status(what: String) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |s| anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

pub async fn apply(endpoint: &str, key: &str, file: &Path, replace: bool, dry_run: bool) -> anyhow::Result<()> {
    let wanted = as_held(&read(file)?)?;
    let mut client = client(endpoint, key).await?;
    let held = held(&mut client).await?;
    let plan = plan(&wanted, &held, replace)?;
    plan.print();
    let (created, replaced, unchanged) = (
        plan.count(Step::Create),
        plan.count(Step::Replace),
        plan.count(Step::Unchanged),
    );
    if dry_run {
        println!("dry run: would create {created}, replace {replaced}; {unchanged} unchanged; nothing changed");
        return Ok(());
    }
    let step_of = |list: &[(String, Step)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
    let conditions: HashMap<&str, &Condition> = held
        .audiences
        .iter()
        .chain(&wanted.audiences)
        .map(|a| (a.name.as_str(), &a.definition))
        .collect();
    let old: HashMap<&str, &Condition> = held
        .audiences
        .iter()
        .map(|a| (a.name.as_str(), &a.definition))
        .collect();
    let to_delete: Vec<&str> = plan
        .audiences
        .iter()
        .filter(|(_, s)| *s == Step::Replace)
        .map(|(n, _)| n.as_str())
        .collect();
    for name in ordered(&to_delete, &old, false) {
        client
            .delete_audience(pb::DeleteAudienceRequest { name: name.into() })
            .await
            .map_err(status(format!("deleting audience {name:?}")))?;
    }
    for t in &wanted.computed_traits {
        let step = step_of(&plan.traits, &t.name);
        if step == Some(Step::Replace) {
            client
                .delete_computed_trait(pb::DeleteComputedTraitRequest { name: t.name.clone() })
                .await
                .map_err(status(format!("deleting computed trait {:?}", t.name)))?;
        }
        if step != Some(Step::Unchanged) {
            let mut message = trait_message(t, chrono::DateTime::UNIX_EPOCH);
            message.created_at = None;
            client
                .create_computed_trait(pb::CreateComputedTraitRequest {
                    computed_trait: Some(message),
                })
                .await
                .map_err(status(format!("creating computed trait {:?}", t.name)))?;
        }
    }
    let to_create: Vec<&str> = plan
        .audiences
        .iter()
        .filter(|(_, s)| *s != Step::Unchanged)
        .map(|(n, _)| n.as_str())
        .collect();
    for name in ordered(&to_create, &conditions, true) {
        let a = wanted
            .audiences
            .iter()
            .find(|a| a.name == name)
            .expect("planned from the file");
        client
            .create_audience(pb::CreateAudienceRequest {
                audience: Some(pb::Audience {
                    name: a.name.clone(),
                    description: a.description.clone(),
                    definition: Some(condition_message(&a.definition)),
                    ..pb::Audience::default()
                }),
            })
            .await
            .map_err(status(format!("creating audience {name:?}")))?;
    }
    println!("applied: {created} created, {replaced} replaced, {unchanged} unchanged");
    Ok(())
}

pub async fn export(endpoint: &str, key: &str) -> anyhow::Result<()> {
    let held = held(&mut client(endpoint, key).await?).await?;
    println!("{}", serde_json::to_string_pretty(&held)?);
    Ok(())
}

pub async fn list(endpoint: &str, key: &str) -> anyhow::Result<()> {
    let mut client = client(endpoint, key).await?;
    for t in held_traits(&mut client).await? {
        println!("computed trait {:<24} {}", t.name, serde_json::to_string(&t)?);
    }
    let audiences = held_audiences(&mut client).await?;
    for a in audiences {
        let state = if a.built_at.is_some() { "" } else { " (building)" };
        println!("audience {:<30} {} members{state}", a.name, a.size);
    }
    Ok(())
}

pub async fn delete(endpoint: &str, key: &str, name: &str, computed_trait: bool) -> anyhow::Result<()> {
    let mut client = client(endpoint, key).await?;
    if computed_trait {
        client
            .delete_computed_trait(pb::DeleteComputedTraitRequest { name: name.into() })
            .await
            .map_err(status(format!("deleting computed trait {name:?}")))?;
        println!("deleted computed trait {name}");
    } else {
        client
            .delete_audience(pb::DeleteAudienceRequest { name: name.into() })
            .await
            .map_err(status(format!("deleting audience {name:?}")))?;
        println!("deleted audience {name}");
    }
    Ok(())
}

/// Prints an audience's entries and exits as they happen, one line each, until the
/// audience is deleted or the command is stopped.
pub async fn watch(endpoint: &str, key: &str, name: &str, after: Option<u64>) -> anyhow::Result<()> {
    let mut stream = client(endpoint, key)
        .await?
        .stream_audience_changes(pb::StreamAudienceChangesRequest {
            name: name.into(),
            after_sequence: after,
        })
        .await
        .map_err(status(format!("watching audience {name:?}")))?
        .into_inner();
    while let Some(change) = stream.message().await.map_err(status(format!("audience {name:?}")))? {
        let at = change
            .at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.try_into().ok()?))
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let verb = if change.entered { "entered" } else { "left" };
        println!(
            "{} {at} {} {verb} ({})",
            change.sequence, change.profile_id, change.reason
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs(value: serde_json::Value) -> Definitions {
        as_held(&serde_json::from_value(value).unwrap()).unwrap()
    }

    fn spend() -> serde_json::Value {
        json!({"name": "spend", "aggregation": "sum", "property": "revenue",
               "filter": {"events": ["Order Completed"]}})
    }

    #[test]
    fn a_plan_creates_keeps_and_replaces_only_when_asked() {
        let held = defs(json!({
            "computed_traits": [spend()],
            "audiences": [{"name": "big", "definition": {"compare": {"field": "computed.spend", "op": "gt", "value": 100}}}]
        }));
        let file = defs(json!({
            "computed_traits": [spend()],
            "audiences": [
                {"name": "big", "definition": {"compare": {"field": "computed.spend", "op": "gt", "value": 200}}},
                {"name": "big_fr", "definition": {"all": [{"audience": "big"},
                    {"compare": {"field": "traits.country", "op": "eq", "value": "FR"}}]}}
            ]
        }));
        let err = plan(&file, &held, false).unwrap_err().to_string();
        assert!(err.contains("1 definition(s) differ"), "{err}");
        let planned = plan(&file, &held, true).unwrap();
        assert_eq!(
            planned,
            Plan {
                traits: vec![("spend".into(), Step::Unchanged)],
                audiences: vec![("big".into(), Step::Replace), ("big_fr".into(), Step::Create)],
            }
        );
        // What is held, applied again, changes nothing.
        let again = plan(&held, &held, false).unwrap();
        assert_eq!(again.count(Step::Unchanged), 2);
    }

    #[test]
    fn what_the_server_would_refuse_is_refused_before_anything_changes() {
        let held = Definitions::default();
        for (file, says) in [
            (
                json!({"audiences": [{"name": "a", "definition": {"audience": "b"}}]}),
                "no audience \"b\"",
            ),
            (
                json!({"audiences": [{"name": "a", "definition": {"compare": {"field": "computed.nope", "op": "gt", "value": 1}}}]}),
                "audiences[0] (a)",
            ),
            (
                json!({"audiences": [{"name": "a", "definition": {"audience": "b"}}, {"name": "b", "definition": {"audience": "a"}}]}),
                "cycle",
            ),
            (json!({"computed_traits": [spend(), spend()]}), "named twice"),
            (
                json!({"audiences": [{"name": "Big-FR", "definition": {"audience": "b"}}]}),
                "audiences[0] (Big-FR).name",
            ),
        ] {
            let err = plan(&defs(file), &held, true).unwrap_err().to_string();
            assert!(err.contains(says), "{err} should say {says}");
        }
        let typo = serde_json::from_value::<Definitions>(json!({"audience": []})).unwrap_err();
        assert!(typo.to_string().contains("unknown field `audience`"), "{typo}");
    }

    #[test]
    fn a_replacement_others_depend_on_is_refused() {
        let held = defs(json!({
            "computed_traits": [spend()],
            "audiences": [{"name": "big", "definition": {"compare": {"field": "computed.spend", "op": "gt", "value": 100}}}]
        }));
        let mut changed = spend();
        changed["property"] = json!("total");
        let err = plan(&defs(json!({"computed_traits": [changed]})), &held, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("audience \"big\" compares computed.spend"), "{err}");
    }

    #[test]
    fn what_refers_to_a_replacement_is_replaced_with_it() {
        let with = |threshold: i64| {
            defs(json!({
                "computed_traits": [spend()],
                "audiences": [
                    {"name": "big", "definition": {"compare": {"field": "computed.spend", "op": "gt", "value": threshold}}},
                    {"name": "big_fr", "definition": {"all": [{"audience": "big"},
                        {"compare": {"field": "traits.country", "op": "eq", "value": "FR"}}]}},
                    {"name": "fr", "definition": {"compare": {"field": "traits.country", "op": "eq", "value": "FR"}}}
                ]
            }))
        };
        let planned = plan(&with(200), &with(100), true).unwrap();
        assert_eq!(
            planned.audiences,
            vec![
                ("big".into(), Step::Replace),
                ("big_fr".into(), Step::Replace),
                ("fr".into(), Step::Unchanged)
            ]
        );
    }

    #[test]
    fn audiences_are_created_after_those_they_refer_to_and_deleted_before() {
        let file = defs(json!({"audiences": [
            {"name": "c", "definition": {"audience": "b"}},
            {"name": "b", "definition": {"audience": "a"}},
            {"name": "a", "definition": {"compare": {"field": "traits.plan", "op": "eq", "value": "pro"}}}
        ]}));
        let conditions: HashMap<&str, &Condition> = file
            .audiences
            .iter()
            .map(|a| (a.name.as_str(), &a.definition))
            .collect();
        assert_eq!(ordered(&["c", "b", "a"], &conditions, true), vec!["a", "b", "c"]);
        assert_eq!(ordered(&["a", "b", "c"], &conditions, false), vec!["c", "b", "a"]);
    }
}
