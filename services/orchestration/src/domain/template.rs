//! Content templates: text with `{{field}}` or `{{field|default}}` over the person's
//! profile. Fields: `traits.<name>` (a dotted path into the traits), `products.<n>`
//! (the n-th product slot, from 0), `profile_id`, `campaign`, `action`.

use serde_json::Value;

/// A part of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Part<'a> {
    Text(&'a str),
    Field { field: Field<'a>, default: &'a str },
}

#[derive(Debug, Clone, PartialEq)]
enum Field<'a> {
    Trait(&'a str),
    Product(usize),
    ProfileId,
    Campaign,
    Action,
}

/// What a template is filled from.
pub struct Fill<'a> {
    pub traits: &'a serde_json::Map<String, Value>,
    pub products: &'a [String],
    pub profile_id: &'a str,
    pub campaign: &'a str,
    pub action: &'a str,
}

fn parse(template: &str, slots: usize) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("a {{{{ at byte {} is never closed", template.len() - rest.len() + open))?;
        let inner = &after[..close];
        let (name, default) = inner.split_once('|').unwrap_or((inner, ""));
        parts.push(Part::Field {
            field: field(name.trim(), slots)?,
            default,
        });
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err("a }} closes nothing".to_owned());
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

fn field(name: &str, slots: usize) -> Result<Field<'_>, String> {
    match name {
        "profile_id" => return Ok(Field::ProfileId),
        "campaign" => return Ok(Field::Campaign),
        "action" => return Ok(Field::Action),
        _ => {}
    }
    if let Some(path) = name.strip_prefix("traits.") {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("{{{{{name}}}}}: a trait path has an empty part"));
        }
        return Ok(Field::Trait(path));
    }
    if let Some(n) = name.strip_prefix("products.") {
        let n: usize = n
            .parse()
            .map_err(|_| format!("{{{{{name}}}}}: a product slot is a number from 0"))?;
        if n >= slots {
            return Err(format!(
                "{{{{{name}}}}}: the action fills {slots} product slot(s), numbered from 0"
            ));
        }
        return Ok(Field::Product(n));
    }
    Err(format!(
        "{{{{{name}}}}} is not a field: use traits.<name>, products.<n>, profile_id, campaign or action"
    ))
}

/// Checks a template, with the action's number of product slots.
pub fn check(template: &str, slots: usize) -> Result<(), String> {
    parse(template, slots).map(drop)
}

/// The template filled in; a field without a value takes its default (empty if none).
pub fn render(template: &str, fill: &Fill<'_>) -> String {
    let Ok(parts) = parse(template, fill.products.len().max(MAX_SLOTS)) else {
        return template.to_owned();
    };
    let mut out = String::with_capacity(template.len());
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Field { field, default } => {
                let value = match field {
                    Field::Trait(path) => trait_text(fill.traits, path),
                    Field::Product(n) => fill.products.get(n).cloned(),
                    Field::ProfileId => Some(fill.profile_id.to_owned()),
                    Field::Campaign => Some(fill.campaign.to_owned()),
                    Field::Action => Some(fill.action.to_owned()),
                };
                out.push_str(value.as_deref().filter(|v| !v.is_empty()).unwrap_or(default));
            }
        }
    }
    out
}

/// The most product slots an action may fill.
pub const MAX_SLOTS: usize = 10;

fn trait_text(traits: &serde_json::Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut value = traits.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(traits: &'a serde_json::Map<String, Value>, products: &'a [String]) -> Fill<'a> {
        Fill {
            traits,
            products,
            profile_id: "p1",
            campaign: "winback",
            action: "mail",
        }
    }

    #[test]
    fn fields_are_filled_and_defaults_cover_what_is_missing() {
        let traits = serde_json::json!({"first_name": "Ada", "address": {"city": "Lyon"}, "age": 36});
        let traits = traits.as_object().unwrap();
        let products = ["milk".to_owned()];
        let text = "Hi {{traits.first_name}} of {{traits.address.city}} ({{traits.age}}), \
                    {{traits.nickname|friend}}: {{products.0}} from {{campaign}}/{{action}} for {{profile_id}}";
        check(text, 1).unwrap();
        assert_eq!(
            render(text, &fill(traits, &products)),
            "Hi Ada of Lyon (36), friend: milk from winback/mail for p1"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(check("Hi {{traits.first_name", 0).unwrap_err().contains("never closed"));
        assert!(check("Hi }}", 0).unwrap_err().contains("closes nothing"));
        assert!(check("{{email}}", 0).unwrap_err().contains("is not a field"));
        assert!(check("{{products.1}}", 1).unwrap_err().contains("1 product slot"));
        assert!(check("{{traits.}}", 0).unwrap_err().contains("empty part"));
    }
}
