//! REST request bodies → rules (SPEC §7): JSON or form bodies, MailerQ's
//! field forms, and ids derived from the conditions when none is given.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::rules::{Key, Node, Origin, Rule, Source, Value, validate_rule};

/// `description` written when a MailerQ-style request has none.
pub const DEFAULT_DESCRIPTION: &str = "Delivery stopped by a forced error";

/// A client mistake: the field at fault (when there is one) and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub field: Option<String>,
    pub message: String,
    /// Every problem, when validation found several.
    pub errors: Vec<(Option<String>, String)>,
}

impl BodyError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        BodyError {
            field: Some(field.to_owned()),
            errors: vec![(Some(field.to_owned()), message.clone())],
            message,
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        let message = message.into();
        BodyError {
            field: None,
            errors: vec![(None, message.clone())],
            message,
        }
    }
}

/// Parses a JSON object, or an `application/x-www-form-urlencoded` body
/// (repeated keys become lists), into one JSON object.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Map<String, Json>, BodyError> {
    let is_form = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    // `curl -d '{...}'` labels JSON as a form: a body that opens like a JSON
    // object is read as one.
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let is_form = is_form && !looks_like_json;
    if is_form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| BodyError::body(format!("the form body cannot be decoded: {e}")))?;
        let mut map = Map::new();
        for (k, v) in pairs {
            match map.get_mut(&k) {
                None => {
                    map.insert(k, Json::String(v));
                }
                Some(Json::Array(list)) => list.push(Json::String(v)),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Json::Array(vec![first, Json::String(v)]);
                }
            }
        }
        // Form values are text: read numbers and booleans where a rule needs them.
        for key in ["code"] {
            if let Some(Json::String(s)) = map.get(key)
                && let Ok(n) = s.trim().parse::<i64>()
            {
                map.insert(key.to_owned(), Json::from(n));
            }
        }
        for key in ["match_all", "cluster"] {
            if let Some(Json::String(s)) = map.get(key) {
                match s.as_str() {
                    "true" | "1" => {
                        map.insert(key.to_owned(), Json::Bool(true));
                    }
                    "false" | "0" => {
                        map.insert(key.to_owned(), Json::Bool(false));
                    }
                    _ => {}
                }
            }
        }
        return Ok(map);
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError::body("the body must be a JSON object")),
        Err(e) => Err(BodyError::body(format!("the body is not valid JSON: {e}"))),
    }
}

/// Turns a request object into a validated API rule, applying MailerQ's
/// forms first. A condition is never silently dropped: fields a sidecar
/// cannot honour are refused.
pub fn rule_from_request(
    mut map: Map<String, Json>,
    created_by: &str,
    now: DateTime<Utc>,
) -> Result<Rule, BodyError> {
    if map.contains_key("ip") {
        return Err(BodyError::field(
            "ip",
            "\"ip\" (the remote MX IP) cannot be honoured by a sidecar, which never sees the connection; \
             remove it (dropping it silently would widen the rule)",
        ));
    }
    match map.remove("cluster") {
        None | Some(Json::Bool(true)) => {}
        Some(Json::Bool(false)) => {
            return Err(BodyError::field(
                "cluster",
                "\"cluster\": false cannot be honoured: rules posted to bouncer apply to every instance",
            ));
        }
        Some(_) => {
            return Err(BodyError::field(
                "cluster",
                "\"cluster\" must be true or false",
            ));
        }
    }
    if let Some(tag) = map.remove("tag") {
        if map.contains_key("tags") {
            return Err(BodyError::field(
                "tag",
                "give either \"tag\" or \"tags\", not both",
            ));
        }
        map.insert("tags".into(), tag);
    }
    if let Some(extended) = map.remove("extended") {
        if map.contains_key("status") {
            return Err(BodyError::field(
                "extended",
                "give either \"extended\" or \"status\", not both",
            ));
        }
        map.insert("status".into(), extended);
    }
    if let Some(Json::String(code)) = map.get("code") {
        match code.trim().parse::<i64>() {
            Ok(n) => {
                map.insert("code".into(), Json::from(n));
            }
            Err(_) => {
                return Err(BodyError::field(
                    "code",
                    format!("code {code:?} is not a number from 400 to 599"),
                ));
            }
        }
    }
    if !map.contains_key("description") {
        map.insert(
            "description".into(),
            Json::String(DEFAULT_DESCRIPTION.into()),
        );
    }
    let derive = !map.contains_key("id");
    if derive {
        // Placeholder until the conditions are validated and normalised.
        map.insert("id".into(), Json::String("api-pending".into()));
    }
    let node = Node::from_serde_json(&Json::Object(map));
    let Value::Table(table) = node.value else {
        unreachable!("an object converts to a table")
    };
    let table: Vec<(Key, Node)> = table;
    let mut rule = validate_rule(&table, 0..0, Origin::Api, Source::Api).map_err(|errors| {
        let first = &errors[0];
        BodyError {
            field: first.field.clone(),
            message: first.message.clone(),
            errors: errors
                .iter()
                .map(|e| (e.field.clone(), e.message.clone()))
                .collect(),
        }
    })?;
    if derive {
        rule.id = derive_id(&rule);
    }
    rule.created_by = Some(created_by.to_owned());
    rule.created_at = Some(now);
    Ok(rule)
}

/// `api-` + the first 32 hex digits of SHA-256 over the RFC 8785 (JCS) form
/// of the rule's normalised conditions (SPEC §7), so posting the same
/// conditions again replaces the rule.
pub fn derive_id(rule: &Rule) -> String {
    let digest = Sha256::digest(canonical_conditions(rule).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("api-{}", &hex[..32])
}

/// The JCS serialisation hashed by [`derive_id`]. Keys are ASCII, so byte
/// order is JCS's UTF-16 order; serde_json escapes strings as JCS does.
pub fn canonical_conditions(rule: &Rule) -> String {
    let c = &rule.conditions;
    let mut object = std::collections::BTreeMap::<&str, Json>::new();
    let sorted = |mut items: Vec<String>| {
        items.sort();
        items.dedup();
        Json::from(items)
    };
    if let Some(nets) = &c.mta {
        object.insert("mta", sorted(nets.iter().map(|n| n.to_string()).collect()));
        let mode = match c.mta_match.unwrap_or_default() {
            crate::rules::MtaMatch::All => "all",
            crate::rules::MtaMatch::Any => "any",
        };
        object.insert("mta_match", Json::from(mode));
    }
    if let Some(pools) = &c.pool {
        object.insert("pool", sorted(pools.iter().map(str::to_owned).collect()));
    }
    if let Some(domains) = &c.domain {
        object.insert("domain", sorted(domains.patterns().collect()));
    }
    if let Some(domains) = &c.sender_domain {
        object.insert("sender_domain", sorted(domains.patterns().collect()));
    }
    if let Some(tags) = &c.tags {
        object.insert("tags", sorted(tags.iter().map(str::to_owned).collect()));
    }
    if rule.match_all {
        object.insert("match_all", Json::Bool(true));
    }
    serde_json::to_string(&object).expect("strings and lists serialise")
}

/// A rule as the API and the control topic write it: the fields of a rule
/// file, conditions normalised.
pub fn rule_json(rule: &Rule) -> Json {
    let mut map = Map::new();
    map.insert("id".into(), Json::from(rule.id.clone()));
    map.insert("code".into(), Json::from(rule.code));
    map.insert(
        "status".into(),
        rule.status.clone().map_or(Json::Null, Json::from),
    );
    map.insert("description".into(), Json::from(rule.description.clone()));
    let c = &rule.conditions;
    if let Some(nets) = &c.mta {
        map.insert(
            "mta".into(),
            Json::from(nets.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        );
        map.insert(
            "mta_match".into(),
            serde_json::to_value(c.mta_match.unwrap_or_default()).expect("enum"),
        );
    }
    if let Some(pools) = &c.pool {
        map.insert(
            "pool".into(),
            Json::from(pools.iter().map(str::to_owned).collect::<Vec<_>>()),
        );
    }
    if let Some(domains) = &c.domain {
        map.insert(
            "domain".into(),
            Json::from(domains.patterns().collect::<Vec<_>>()),
        );
    }
    if let Some(domains) = &c.sender_domain {
        map.insert(
            "sender_domain".into(),
            Json::from(domains.patterns().collect::<Vec<_>>()),
        );
    }
    if let Some(tags) = &c.tags {
        map.insert(
            "tags".into(),
            Json::from(tags.iter().map(str::to_owned).collect::<Vec<_>>()),
        );
    }
    if rule.match_all {
        map.insert("match_all".into(), Json::Bool(true));
    }
    map.insert(
        "mode".into(),
        serde_json::to_value(rule.mode).expect("enum"),
    );
    map.insert(
        "not_before".into(),
        rule.not_before
            .map_or(Json::Null, |t| Json::from(t.to_rfc3339())),
    );
    map.insert(
        "expires".into(),
        rule.expires
            .map_or(Json::Null, |t| Json::from(t.to_rfc3339())),
    );
    Json::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: Json) -> Result<Rule, BodyError> {
        let Json::Object(map) = body else {
            panic!("object")
        };
        rule_from_request(map, "ops", Utc::now())
    }

    /// Golden vectors: the canonical form follows SPEC §7 by hand, the ids
    /// were computed independently (Python: hashlib.sha256 over
    /// json.dumps(obj, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)).
    #[test]
    fn derived_ids_match_golden_vectors() {
        let cases = [
            (
                serde_json::json!({"code": 550, "tag": "campaign_X"}),
                r#"{"tags":["campaign_X"]}"#,
                "api-bb793a792f826e6540c331521232f470",
            ),
            (
                serde_json::json!({"code": "451", "domain": ["Gmail.com.", "*.Example.COM", "gmail.com"], "mta": "192.0.2.10"}),
                r#"{"domain":["*.example.com","gmail.com"],"mta":["192.0.2.10/32"],"mta_match":"all"}"#,
                "api-a4d3fa3c8550b9ca59dce28928b106cd",
            ),
            (
                serde_json::json!({"code": 550, "domain": "bücher.example", "sender_domain": "news.example.org", "pool": ["p2", "p1"], "tags": ["b", "a", "b"]}),
                r#"{"domain":["xn--bcher-kva.example"],"pool":["p1","p2"],"sender_domain":["news.example.org"],"tags":["a","b"]}"#,
                "api-86e918907a5381490eb54ee7b957dcc8",
            ),
            (
                serde_json::json!({"code": 550, "match_all": true}),
                r#"{"match_all":true}"#,
                "api-b41d7a7a2ccb3eeb18c2797d5f9a4eb4",
            ),
            (
                serde_json::json!({"code": 550, "mta": ["2001:DB8::/32", "198.51.100.0/24"], "mta_match": "any"}),
                r#"{"mta":["198.51.100.0/24","2001:db8::/32"],"mta_match":"any"}"#,
                "api-50850e4eef38b6972843cd5b052e9336",
            ),
        ];
        for (body, canonical, id) in cases {
            let rule = post(body).unwrap();
            assert_eq!(canonical_conditions(&rule), canonical);
            assert_eq!(rule.id, id);
        }
    }

    #[test]
    fn reposting_the_same_conditions_gives_the_same_id() {
        let a = post(serde_json::json!({"code": 550, "domain": ["b.example", "a.example"], "description": "one"})).unwrap();
        let b =
            post(serde_json::json!({"code": 451, "domain": ["A.example", "b.example."]})).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(b.description, DEFAULT_DESCRIPTION);
    }

    #[test]
    fn mailerq_forms_are_accepted() {
        let rule = post(serde_json::json!({"code": "550", "extended": "5.7.1", "tag": "campaign_X", "domain": "gmail.com", "cluster": true})).unwrap();
        assert_eq!(rule.code, 550);
        assert_eq!(rule.status.as_deref(), Some("5.7.1"));
        assert!(
            rule.conditions
                .tags
                .as_ref()
                .unwrap()
                .contains("campaign_X")
        );
    }

    #[test]
    fn fields_a_sidecar_cannot_honour_are_refused_by_name() {
        let e = post(serde_json::json!({"code": 550, "domain": "a.example", "ip": "203.0.113.5"}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ip"));
        let e = post(serde_json::json!({"code": 550, "domain": "a.example", "cluster": false}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cluster"));
    }

    #[test]
    fn validation_errors_name_the_field() {
        for (body, field) in [
            (
                serde_json::json!({"code": 600, "domain": "a.example"}),
                "code",
            ),
            (
                serde_json::json!({"code": "abc", "domain": "a.example"}),
                "code",
            ),
            (serde_json::json!({"code": 550, "mta": "10.0.0.300"}), "mta"),
            (
                serde_json::json!({"code": 550, "domian": "a.example"}),
                "domian",
            ),
        ] {
            let e = post(body.clone()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {e:?}");
        }
        let e = post(serde_json::json!({"code": 550})).unwrap_err();
        assert!(e.message.contains("no condition"), "{e:?}");
    }

    #[test]
    fn form_bodies_become_objects() {
        let map = parse_body(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"code=550&domain=a.example&domain=b.example&match_all=false&tag=x",
        )
        .unwrap();
        let rule = rule_from_request(map, "ops", Utc::now()).unwrap();
        assert_eq!(rule.conditions.domain.as_ref().unwrap().len(), 2);
        assert_eq!(rule.code, 550);
    }
}
