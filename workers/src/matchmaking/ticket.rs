//! Matchmaking tickets: what a client asks for (`matchmaking.join`), how it
//! is validated, how it is stored, and when two tickets are compatible.
//!
//! Invariants:
//! - A [`Ticket`] only exists validated: bounded sizes, keys `[a-z0-9_]{1,32}`,
//!   string values ≤ 64 bytes, finite numbers, `2 ≤ min ≤ max ≤ MAX_GROUP`.
//! - Compatibility is mutual and symmetric: [`compatible`]`(a, b) ==
//!   compatible(b, a)`; each side's required terms and active (not yet
//!   relaxed) optional terms must hold for the other side's properties.
//! - Tickets are immutable once stored: a changed ticket is a new ticket
//!   (new id), so "id still waiting" is all a claim has to check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::ids::{GatewayId, UserId};
use switchboard_shared::members::{ConnMember, TicketOwner};

/// Most properties on a ticket.
pub const MAX_PROPS: usize = 32;
/// Most required terms (including ranges) and most optional terms.
pub const MAX_TERMS: usize = 32;
/// Most values in one "any of" term.
pub const MAX_CHOICES: usize = 16;
/// Longest property key.
pub const MAX_KEY_LEN: usize = 32;
/// Longest string value, in bytes.
pub const MAX_STR_LEN: usize = 64;
/// Largest group a ticket may ask for.
pub const MAX_GROUP: u32 = 16;

/// A property value: a short string or a finite number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prop {
    Num(f64),
    Str(String),
}

/// A number as clients wrote it: integral values without a fraction.
fn num_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

impl Prop {
    fn to_json(&self) -> Value {
        match self {
            Self::Num(n) => num_json(*n),
            Self::Str(s) => json!(s),
        }
    }

    /// A key for in-memory indexes: equal values give equal keys.
    pub fn index_key(&self, key: &str) -> String {
        match self {
            // -0.0 == 0.0: canonicalise before taking the bits.
            Self::Num(n) => format!("{key}\0n{}", (n + 0.0).to_bits()),
            Self::Str(s) => format!("{key}\0s{s}"),
        }
    }
}

/// What a term asks of one property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Test {
    /// The property equals one of these values.
    In(Vec<Prop>),
    /// The property is a number within the bounds (inclusive).
    Range { min: Option<f64>, max: Option<f64> },
}

/// One condition on the other ticket's properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    pub key: String,
    pub test: Test,
}

impl Term {
    /// Whether `props` satisfy this term (a missing property never does).
    pub fn holds(&self, props: &BTreeMap<String, Prop>) -> bool {
        let Some(p) = props.get(&self.key) else {
            return false;
        };
        match (&self.test, p) {
            (Test::In(vals), p) => vals.iter().any(|v| v == p),
            (Test::Range { min, max }, Prop::Num(n)) => {
                min.is_none_or(|m| *n >= m) && max.is_none_or(|m| *n <= m)
            }
            (Test::Range { .. }, Prop::Str(_)) => false,
        }
    }

    fn to_json(&self) -> Value {
        match &self.test {
            Test::In(v) if v.len() == 1 => v[0].to_json(),
            Test::In(v) => Value::Array(v.iter().map(Prop::to_json).collect()),
            Test::Range { min, max } => {
                let mut o = Map::new();
                if let Some(m) = min {
                    o.insert("min".into(), num_json(*m));
                }
                if let Some(m) = max {
                    o.insert("max".into(), num_json(*m));
                }
                Value::Object(o)
            }
        }
    }
}

/// A stored ticket (the JSON in the tickets hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub user: String,
    /// Gateway and connection that joined: where pushes go.
    pub gw: String,
    pub conn: u64,
    /// Enqueued at (Unix ms).
    pub at: u64,
    /// Expires at (Unix ms).
    pub exp: u64,
    pub min: u32,
    pub max: u32,
    pub props: BTreeMap<String, Prop>,
    pub required: Vec<Term>,
    /// In relaxation order: the first is dropped first.
    pub optional: Vec<Term>,
}

impl Ticket {
    /// The connection that owns the ticket; `None` when the stored ids are
    /// not valid ones (a ticket written by something else).
    pub fn owner(&self) -> Option<TicketOwner> {
        Some(TicketOwner {
            gw: GatewayId::parse(&self.gw).ok()?,
            conn: self.conn,
            user: UserId::parse(&self.user).ok()?,
        })
    }

    /// Where the ticket's pushes go.
    pub fn conn_member(&self) -> Option<ConnMember> {
        Some(ConnMember::new(
            &GatewayId::parse(&self.gw).ok()?,
            self.conn,
        ))
    }

    /// How many optional terms are relaxed after waiting until `now`.
    pub fn relaxed(&self, now: u64, relax_after_secs: &[u64]) -> usize {
        let waited = now.saturating_sub(self.at);
        relax_after_secs
            .iter()
            .take_while(|s| s.saturating_mul(1000) <= waited)
            .count()
            .min(self.optional.len())
    }

    /// The terms in force after relaxing the first `relaxed` optional ones.
    pub fn active_terms(&self, relaxed: usize) -> impl Iterator<Item = &Term> {
        self.required
            .iter()
            .chain(self.optional.iter().skip(relaxed))
    }

    /// Whether this ticket (with `relaxed` optional terms dropped) accepts
    /// someone with `props`.
    pub fn accepts(&self, relaxed: usize, props: &BTreeMap<String, Prop>) -> bool {
        self.active_terms(relaxed).all(|t| t.holds(props))
    }

    pub fn props_json(&self) -> Value {
        Value::Object(
            self.props
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    /// The query in the shape clients send it.
    pub fn query_json(&self) -> Value {
        let mut required = Map::new();
        let mut ranges = Map::new();
        for t in &self.required {
            match t.test {
                Test::Range { .. } => ranges.insert(t.key.clone(), t.to_json()),
                Test::In(_) => required.insert(t.key.clone(), t.to_json()),
            };
        }
        let optional: Vec<Value> = self
            .optional
            .iter()
            .map(|t| json!({ t.key.clone(): t.to_json() }))
            .collect();
        json!({"required": required, "optional": optional, "ranges": ranges})
    }
}

/// Whether `a` and `b` may be in one group: each accepts the other, and
/// their group sizes overlap.
pub fn compatible(a: &Ticket, a_relaxed: usize, b: &Ticket, b_relaxed: usize) -> bool {
    a.min.max(b.min) <= a.max.min(b.max)
        && a.accepts(a_relaxed, &b.props)
        && b.accepts(b_relaxed, &a.props)
}

/// `matchmaking.join` data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinReq {
    #[serde(default)]
    pub props: Map<String, Value>,
    #[serde(default)]
    pub query: QueryReq,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryReq {
    #[serde(default)]
    pub required: Map<String, Value>,
    #[serde(default)]
    pub optional: Vec<Value>,
    #[serde(default)]
    pub ranges: Map<String, Value>,
}

/// What a valid join asks for (everything of a ticket but its identity).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub min: u32,
    pub max: u32,
    pub props: BTreeMap<String, Prop>,
    pub required: Vec<Term>,
    pub optional: Vec<Term>,
}

fn bad(msg: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::BadRequest, msg)
}

fn check_key(k: &str, what: &str) -> Result<(), ClientError> {
    if k.is_empty()
        || k.len() > MAX_KEY_LEN
        || !k
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(format!(
            "{what} key {k:?} must match [a-z0-9_]{{1,{MAX_KEY_LEN}}}"
        )));
    }
    Ok(())
}

fn prop(v: &Value, what: &str) -> Result<Prop, ClientError> {
    match v {
        Value::String(s) if s.len() <= MAX_STR_LEN => Ok(Prop::Str(s.clone())),
        Value::String(_) => Err(bad(format!(
            "{what}: strings are at most {MAX_STR_LEN} bytes"
        ))),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Prop::Num(f)),
            _ => Err(bad(format!("{what}: numbers must be finite"))),
        },
        _ => Err(bad(format!("{what}: values are strings or numbers"))),
    }
}

fn bound(v: Option<&Value>, what: &str) -> Result<Option<f64>, ClientError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(bad(format!("{what}: bounds must be finite numbers"))),
        },
        Some(_) => Err(bad(format!("{what}: bounds must be numbers"))),
    }
}

fn range(v: &Value, what: &str) -> Result<Test, ClientError> {
    let Value::Object(o) = v else {
        return Err(bad(format!("{what}: a range is {{min?, max?}}")));
    };
    if let Some(k) = o.keys().find(|k| *k != "min" && *k != "max") {
        return Err(bad(format!("{what}: unknown range field {k:?}")));
    }
    let (min, max) = (bound(o.get("min"), what)?, bound(o.get("max"), what)?);
    match (min, max) {
        (None, None) => Err(bad(format!("{what}: a range needs `min` and/or `max`"))),
        (Some(a), Some(b)) if a > b => Err(bad(format!("{what}: `min` is above `max`"))),
        _ => Ok(Test::Range { min, max }),
    }
}

/// A term's test: a value, a list of values (any of), or a range.
fn test(v: &Value, what: &str) -> Result<Test, ClientError> {
    match v {
        Value::Array(list) => {
            if list.is_empty() || list.len() > MAX_CHOICES {
                return Err(bad(format!(
                    "{what}: a list takes 1 to {MAX_CHOICES} values"
                )));
            }
            Ok(Test::In(
                list.iter()
                    .map(|x| prop(x, what))
                    .collect::<Result<_, _>>()?,
            ))
        }
        Value::Object(_) => range(v, what),
        other => Ok(Test::In(vec![prop(other, what)?])),
    }
}

impl JoinReq {
    /// Validates the request into a [`Spec`].
    pub fn validate(self) -> Result<Spec, ClientError> {
        if self.props.len() > MAX_PROPS {
            return Err(bad(format!("at most {MAX_PROPS} props")));
        }
        let mut props = BTreeMap::new();
        for (k, v) in &self.props {
            check_key(k, "prop")?;
            props.insert(k.clone(), prop(v, &format!("props.{k}"))?);
        }
        let q = self.query;
        if q.required.len() + q.ranges.len() > MAX_TERMS || q.optional.len() > MAX_TERMS {
            return Err(bad(format!(
                "at most {MAX_TERMS} required terms (with ranges) and {MAX_TERMS} optional ones"
            )));
        }
        let mut required = Vec::new();
        for (k, v) in &q.required {
            check_key(k, "query.required")?;
            required.push(Term {
                key: k.clone(),
                test: test(v, &format!("query.required.{k}"))?,
            });
        }
        for (k, v) in &q.ranges {
            check_key(k, "query.ranges")?;
            required.push(Term {
                key: k.clone(),
                test: range(v, &format!("query.ranges.{k}"))?,
            });
        }
        let mut optional = Vec::new();
        for (i, t) in q.optional.iter().enumerate() {
            let what = format!("query.optional[{i}]");
            let Value::Object(o) = t else {
                return Err(bad(format!("{what}: a term is an object with one key")));
            };
            let mut it = o.iter();
            let (Some((k, v)), None) = (it.next(), it.next()) else {
                return Err(bad(format!("{what}: a term is an object with one key")));
            };
            check_key(k, &what)?;
            optional.push(Term {
                key: k.clone(),
                test: test(v, &what)?,
            });
        }
        let min = self.min.unwrap_or(2);
        let max = self.max.unwrap_or(min.max(2));
        if min < 2 || max > MAX_GROUP || min > max {
            return Err(bad(format!(
                "group size: need 2 <= min <= max <= {MAX_GROUP}"
            )));
        }
        Ok(Spec {
            min,
            max,
            props,
            required,
            optional,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ticket(id: &str, at: u64, spec: Value) -> Ticket {
        let req: JoinReq = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        let s = req.validate().unwrap_or_else(|e| panic!("{e}"));
        Ticket {
            id: id.into(),
            user: id.into(),
            gw: "gw".into(),
            conn: 1,
            at,
            exp: at + 600_000,
            min: s.min,
            max: s.max,
            props: s.props,
            required: s.required,
            optional: s.optional,
        }
    }

    fn invalid(spec: Value) -> bool {
        match serde_json::from_value::<JoinReq>(spec) {
            Err(_) => true,
            Ok(r) => r.validate().is_err_and(|e| e.code == ErrorCode::BadRequest),
        }
    }

    #[test]
    fn compatibility_is_mutual() {
        let a = ticket(
            "a",
            0,
            json!({"props": {"region": "eu", "skill": 10}, "query": {"required": {"region": "eu"}}}),
        );
        let b = ticket(
            "b",
            0,
            json!({"props": {"region": "eu", "skill": 50}, "query": {"ranges": {"skill": {"max": 20}}}}),
        );
        let c = ticket(
            "c",
            0,
            json!({"props": {"region": "us", "skill": 15}, "query": {"ranges": {"skill": {"max": 20}}}}),
        );
        // a requires eu (b is eu); b wants skill <= 20 (a has 10).
        assert!(compatible(&a, 0, &b, 0));
        assert!(compatible(&b, 0, &a, 0));
        // a requires eu; c is us (though c accepts a).
        assert!(c.accepts(0, &a.props));
        assert!(!compatible(&a, 0, &c, 0));
        assert!(!compatible(&c, 0, &a, 0));
    }

    #[test]
    fn optional_terms_relax_in_order() {
        let a = ticket(
            "a",
            0,
            json!({"query": {"optional": [{"language": ["en", "fr"]}, {"mood": "calm"}]}}),
        );
        let b = ticket("b", 0, json!({"props": {"language": "de", "mood": "calm"}}));
        let relax = [10, 20];
        assert_eq!(a.relaxed(9_999, &relax), 0);
        assert!(!compatible(&a, a.relaxed(9_999, &relax), &b, 0));
        assert_eq!(a.relaxed(10_000, &relax), 1);
        assert!(compatible(&a, 1, &b, 0));
        assert_eq!(a.relaxed(1_000_000, &relax), 2);
        let none = ticket("n", 0, json!({}));
        assert_eq!(none.relaxed(1_000_000, &relax), 0);
    }

    #[test]
    fn group_sizes_must_overlap() {
        let pair = ticket("a", 0, json!({}));
        let four = ticket("b", 0, json!({"min": 3, "max": 4}));
        let any = ticket("c", 0, json!({"max": 4}));
        assert_eq!((pair.min, pair.max, four.min, four.max), (2, 2, 3, 4));
        assert!(!compatible(&pair, 0, &four, 0));
        assert!(compatible(&any, 0, &four, 0));
        assert!(compatible(&any, 0, &pair, 0));
    }

    #[test]
    fn strings_and_numbers_never_equal_each_other() {
        let a = ticket("a", 0, json!({"query": {"required": {"level": 3}}}));
        assert!(!a.accepts(0, &ticket("b", 0, json!({"props": {"level": "3"}})).props));
        assert!(a.accepts(0, &ticket("c", 0, json!({"props": {"level": 3.0}})).props));
        let r = ticket("r", 0, json!({"query": {"ranges": {"level": {"min": 1}}}}));
        assert!(!r.accepts(0, &ticket("d", 0, json!({"props": {"level": "9"}})).props));
        assert!(!r.accepts(0, &ticket("e", 0, json!({})).props));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(invalid(json!({"props": {"Region": "eu"}})));
        assert!(invalid(json!({"props": {"": "eu"}})));
        assert!(invalid(json!({"props": {"a": "x".repeat(65)}})));
        assert!(invalid(json!({"props": {"a": true}})));
        assert!(invalid(json!({"props": {"a": [1]}})));
        assert!(invalid(json!({"props": {"a": null}})));
        let many: Map<String, Value> = (0..33).map(|i| (format!("k{i}"), json!(1))).collect();
        assert!(invalid(json!({ "props": many })));
        assert!(invalid(json!({"query": {"ranges": {"a": {}}}})));
        assert!(invalid(
            json!({"query": {"ranges": {"a": {"min": 2, "max": 1}}}})
        ));
        assert!(invalid(json!({"query": {"ranges": {"a": {"min": "x"}}}})));
        assert!(invalid(
            json!({"query": {"ranges": {"a": {"min": 1, "x": 2}}}})
        ));
        assert!(invalid(json!({"query": {"ranges": {"a": 3}}})));
        assert!(invalid(json!({"query": {"required": {"a": []}}})));
        assert!(invalid(json!({"query": {"optional": [{"a": 1, "b": 2}]}})));
        assert!(invalid(json!({"query": {"optional": ["a"]}})));
        assert!(invalid(json!({"query": {"other": {}}})));
        assert!(invalid(json!({"min": 1})));
        assert!(invalid(json!({"min": 3, "max": 2})));
        assert!(invalid(json!({"max": 17})));
        assert!(invalid(json!({"extra": 1})));
        assert!(!invalid(
            json!({"props": {"a": "x".repeat(64), "b": -1.5}, "min": 2, "max": 16})
        ));
    }

    #[test]
    fn queries_render_back_in_the_client_shape() {
        let q = json!({"required": {"region": ["eu", "us"]}, "optional": [{"mood": "calm"}, {"age": {"min": 18}}], "ranges": {"skill": {"min": 1, "max": 5}}});
        let t = ticket("a", 0, json!({ "query": q }));
        let back = t.query_json();
        assert_eq!(back["required"], json!({"region": ["eu", "us"]}));
        assert_eq!(back["ranges"]["skill"], json!({"min": 1, "max": 5}));
        assert_eq!(back["optional"][1], json!({"age": {"min": 18}}));
        let frac = ticket("f", 0, json!({"props": {"x": 1.5, "y": -3}}));
        assert_eq!(frac.props_json(), json!({"x": 1.5, "y": -3}));
        let stored = serde_json::to_string(&t).unwrap_or_default();
        let again: Ticket = serde_json::from_str(&stored).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, t);
    }
}
