//! A small owned value type that both TOML and environment variables turn
//! into, so that every key is checked by one function whatever its origin.

use toml::de::DeValue;

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Val>),
    Table(Vec<(String, Val)>),
    Datetime,
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
            Val::Datetime => "a datetime",
        }
    }

    /// How the value looked, for error messages.
    pub fn show(&self) -> String {
        match self {
            Val::Str(s) => format!("{s:?}"),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Array(_) => "[…]".into(),
            Val::Table(_) => "{…}".into(),
            Val::Datetime => "a datetime".into(),
        }
    }

    pub fn from_toml(v: &DeValue<'_>) -> Val {
        match v {
            DeValue::String(s) => Val::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Val::Int(n),
                // Larger than i64: treat as out of range by every setter.
                Err(_) => Val::Float(f64::INFINITY),
            },
            DeValue::Float(f) => Val::Float(f.as_str().parse().unwrap_or(f64::NAN)),
            DeValue::Boolean(b) => Val::Bool(*b),
            DeValue::Datetime(_) => Val::Datetime,
            DeValue::Array(a) => {
                Val::Array(a.iter().map(|x| Val::from_toml(x.get_ref())).collect())
            }
            DeValue::Table(t) => Val::Table(
                t.iter()
                    .map(|(k, v)| (k.get_ref().to_string(), Val::from_toml(v.get_ref())))
                    .collect(),
            ),
        }
    }

    /// A TOML literal of the key table (any value, tables included).
    pub fn literal(raw: &str) -> Val {
        match DeValue::parse(raw.trim()) {
            Ok(v) => Val::from_toml(v.get_ref()),
            Err(_) => Val::Str(raw.to_string()),
        }
    }

    /// An environment value: a TOML literal when it parses as one
    /// (`4`, `true`, `["a", "b"]`), otherwise the raw string.
    pub fn from_env(raw: &str) -> Val {
        match DeValue::parse(raw.trim()) {
            Ok(v) if !matches!(v.get_ref(), DeValue::Table(_)) => Val::from_toml(v.get_ref()),
            _ => Val::Str(raw.to_string()),
        }
    }
}
