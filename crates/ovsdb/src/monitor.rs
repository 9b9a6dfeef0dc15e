//! What to replicate: per table, the columns and the conditions of a `monitor_cond` request
//! (ovsdb-server(7) "monitor_cond"). Conditions are OR-ed: a row is sent when it matches one
//! of them. Tables and columns not named here are never requested, so never held.
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// RFC 7047 §5.1 condition functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Includes,
    Excludes,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Gt => ">",
            Function::Ge => ">=",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// One clause of a `where`: `[column, function, value]`, or a boolean literal.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition(Value);

impl Condition {
    /// `[column, function, value]`; `value` in wire form (an [`crate::Atom`], a
    /// [`crate::Datum`], a [`crate::Uuid`] or any `serde_json::Value`).
    pub fn new(column: &str, function: Function, value: impl Into<Value>) -> Condition {
        Condition(json!([column, function.as_str(), value.into()]))
    }

    pub fn eq(column: &str, value: impl Into<Value>) -> Condition {
        Condition::new(column, Function::Eq, value)
    }

    pub fn includes(column: &str, value: impl Into<Value>) -> Condition {
        Condition::new(column, Function::Includes, value)
    }

    /// `true` (every row) or `false` (no row).
    pub fn literal(b: bool) -> Condition {
        Condition(Value::Bool(b))
    }

    pub fn to_json(&self) -> Value {
        self.0.clone()
    }

    /// The column a `[column, function, value]` clause names (`None` for a literal).
    pub fn column(&self) -> Option<&str> {
        self.0.get(0).and_then(Value::as_str)
    }
}

/// `conditions` as the server can take them: a clause naming a column its schema lacks for
/// `table` (an older OVN without `Port_Binding.additional_chassis`) is left out, with a
/// warning, instead of having the whole monitor or change refused. The clauses are OR-ed,
/// so this narrows what is monitored; none left means no row.
pub(crate) fn known_conditions(
    schema: &crate::schema::Schema,
    table: &str,
    conditions: &[Condition],
) -> Vec<Value> {
    conditions
        .iter()
        .filter(|c| {
            let known = c
                .column()
                .is_none_or(|col| schema.column(table, col).is_some() || col == "_uuid");
            if !known {
                tracing::warn!(table, column = ?c.column(), "ovsdb: condition on a column not in the server's schema, left out");
            }
            known
        })
        .map(Condition::to_json)
        .collect()
}

/// One table of a monitor.
#[derive(Clone, Debug, PartialEq)]
pub struct TableMonitor {
    pub columns: Option<Vec<String>>,
    pub conditions: Option<Vec<Condition>>,
}

/// A monitor of one database: the tables and, for each, its columns and conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Monitor {
    pub db: String,
    pub tables: BTreeMap<String, TableMonitor>,
}

impl Monitor {
    pub fn new(db: &str) -> Monitor {
        Monitor {
            db: db.to_owned(),
            tables: BTreeMap::new(),
        }
    }

    /// Monitor `table`: `columns` (empty = every column of the schema) and the rows matching
    /// any of `conditions` (`None` = every row).
    pub fn table<'a>(
        mut self,
        table: &str,
        columns: impl IntoIterator<Item = &'a str>,
        conditions: Option<Vec<Condition>>,
    ) -> Monitor {
        let cols: Vec<String> = columns.into_iter().map(str::to_owned).collect();
        self.tables.insert(
            table.to_owned(),
            TableMonitor {
                columns: (!cols.is_empty()).then_some(cols),
                conditions,
            },
        );
        self
    }

    /// The `<monitor-cond-requests>` object, with the column lists resolved against the
    /// server's schema by the caller (`columns`).
    pub(crate) fn requests(
        &self,
        columns: &crate::replica::Columns,
        schema: &crate::schema::Schema,
    ) -> Value {
        let mut out = Map::new();
        for (t, tm) in &self.tables {
            // Tables the server's schema lacks were left out of `columns`: not requested.
            let Some(cols) = columns.get(t) else {
                continue;
            };
            let mut req = Map::new();
            req.insert("columns".into(), json!(cols.as_ref()));
            if let Some(c) = &tm.conditions {
                req.insert("where".into(), Value::Array(known_conditions(schema, t, c)));
            }
            out.insert(t.clone(), json!([Value::Object(req)]));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Uuid;

    #[test]
    fn request_shape() {
        let ch = Uuid::parse("b4e7a515-e349-4e02-8fb5-45a9c81c169b").expect("uuid");
        let m = Monitor::new("OVN_Southbound").table(
            "Port_Binding",
            ["logical_port", "chassis"],
            Some(vec![
                Condition::eq("chassis", ch.clone()),
                Condition::includes("additional_chassis", ch),
                Condition::eq("type", "localport"),
            ]),
        );
        // A server without `additional_chassis` (OVN 22.03): that clause is left out.
        let schema = crate::schema::Schema::from_json(&json!({
            "name": "OVN_Southbound",
            "version": "20.21.0",
            "tables": {"Port_Binding": {"columns": {
                "logical_port": {"type": "string"},
                "chassis": {"type": {"key": {"type": "uuid"}, "min": 0, "max": 1}},
                "type": {"type": "string"}
            }}}
        }))
        .expect("schema");
        let cols = [(
            "Port_Binding".to_owned(),
            vec!["logical_port".to_owned(), "chassis".to_owned()].into(),
        )]
        .into();
        assert_eq!(
            m.requests(&cols, &schema),
            json!({"Port_Binding": [{
                "columns": ["logical_port", "chassis"],
                "where": [["chassis", "==", ["uuid", "b4e7a515-e349-4e02-8fb5-45a9c81c169b"]],
                          ["type", "==", "localport"]]
            }]})
        );
    }
}
