//! `transact` operations (RFC 7047 §5.2) built as values, and their results read back.
//! Enough for the agent's and spawner's writes: insert (with a `uuid-name` for
//! `named-uuid` references), update, mutate (`external_ids` keys), delete, wait, select.
use serde_json::{json, Map, Value};

use crate::datum::{Atom, Datum, Uuid};
use crate::error::{Error, Result};
use crate::monitor::Condition;

/// RFC 7047 §5.1 mutators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Insert,
    Delete,
}

impl Mutator {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// `[column, mutator, value]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation(Value);

impl Mutation {
    pub fn new(column: &str, mutator: Mutator, value: impl Into<Value>) -> Mutation {
        Mutation(json!([column, mutator.as_str(), value.into()]))
    }

    /// Set `pairs` in the string map `column`, replacing the values of keys already there
    /// and keeping the other keys: `delete` the keys, then `insert` the pairs (an `insert`
    /// alone keeps an existing key's old value, RFC 7047 §5.1).
    pub fn set_keys(column: &str, pairs: &[(&str, &str)]) -> [Mutation; 2] {
        let keys = Datum::set(pairs.iter().map(|(k, _)| Atom::from(*k)));
        [
            Mutation::new(column, Mutator::Delete, keys),
            Mutation::new(
                column,
                Mutator::Insert,
                Datum::str_map(pairs.iter().copied()),
            ),
        ]
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Op(Value);

fn where_json(conds: &[Condition]) -> Value {
    Value::Array(conds.iter().map(Condition::to_json).collect())
}

fn row_json<'a>(row: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Object(
        row.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>(),
    )
}

impl Op {
    /// Insert a row; `uuid_name` lets later operations refer to it as
    /// [`crate::named_uuid`]`(name)`.
    pub fn insert<'a>(
        table: &str,
        row: impl IntoIterator<Item = (&'a str, Value)>,
        uuid_name: Option<&str>,
    ) -> Op {
        let mut op = json!({"op": "insert", "table": table, "row": row_json(row)});
        if let (Some(name), Some(o)) = (uuid_name, op.as_object_mut()) {
            o.insert("uuid-name".into(), json!(name));
        }
        Op(op)
    }

    pub fn update<'a>(
        table: &str,
        conditions: &[Condition],
        row: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Op {
        Op(
            json!({"op": "update", "table": table, "where": where_json(conditions), "row": row_json(row)}),
        )
    }

    pub fn mutate(table: &str, conditions: &[Condition], mutations: &[Mutation]) -> Op {
        let m: Vec<Value> = mutations.iter().map(|m| m.0.clone()).collect();
        Op(json!({"op": "mutate", "table": table, "where": where_json(conditions), "mutations": m}))
    }

    pub fn delete(table: &str, conditions: &[Condition]) -> Op {
        Op(json!({"op": "delete", "table": table, "where": where_json(conditions)}))
    }

    pub fn select(table: &str, conditions: &[Condition], columns: &[&str]) -> Op {
        Op(
            json!({"op": "select", "table": table, "where": where_json(conditions), "columns": columns}),
        )
    }

    /// Wait until the rows matching `conditions`, projected on `columns`, are (`until_equal`)
    /// or are not exactly `rows`; `timeout_ms` 0 fails at once if not.
    pub fn wait(
        table: &str,
        conditions: &[Condition],
        columns: &[&str],
        rows: Vec<Value>,
        until_equal: bool,
        timeout_ms: Option<u64>,
    ) -> Op {
        let until = if until_equal { "==" } else { "!=" };
        let mut op = json!({"op": "wait", "table": table, "where": where_json(conditions),
            "columns": columns, "until": until, "rows": rows});
        if let (Some(t), Some(o)) = (timeout_ms, op.as_object_mut()) {
            o.insert("timeout".into(), json!(t));
        }
        Op(op)
    }

    pub fn comment(text: &str) -> Op {
        Op(json!({"op": "comment", "comment": text}))
    }

    pub fn to_json(&self) -> Value {
        self.0.clone()
    }
}

/// What one operation returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpResult {
    /// `insert`: the new row's UUID.
    pub uuid: Option<Uuid>,
    /// `update`, `mutate`, `delete`: rows affected.
    pub count: Option<u64>,
    /// `select`: the rows, in wire form.
    pub rows: Vec<Value>,
}

/// Read a transaction reply for `n_ops` operations: an error in any result (or a trailing
/// commit error) fails the whole call, as the server has rolled it back.
pub(crate) fn results(reply: &Value, n_ops: usize) -> Result<Vec<OpResult>> {
    let arr = reply
        .as_array()
        .ok_or_else(|| Error::protocol(format!("transact reply is not an array: {reply}")))?;
    for (index, r) in arr.iter().enumerate() {
        if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
            return Err(Error::Transaction {
                index,
                error: e.as_str().map_or_else(|| e.to_string(), str::to_owned),
                details: r.get("details").and_then(Value::as_str).map(str::to_owned),
            });
        }
    }
    if arr.len() < n_ops {
        return Err(Error::protocol(format!(
            "transact reply has {} results for {n_ops} operations",
            arr.len()
        )));
    }
    Ok(arr
        .iter()
        .take(n_ops)
        .map(|r| OpResult {
            uuid: r
                .get("uuid")
                .and_then(|u| u.get(1))
                .and_then(Value::as_str)
                .and_then(Uuid::parse),
            count: r.get("count").and_then(Value::as_u64),
            rows: r
                .get("rows")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_mutation_shape() {
        let op = Op::mutate(
            "Chassis_Private",
            &[Condition::eq("name", "ch1")],
            &Mutation::set_keys("external_ids", &[("neutron:ovn-bridge", "br-int")]),
        );
        assert_eq!(
            op.to_json(),
            json!({"op":"mutate","table":"Chassis_Private","where":[["name","==","ch1"]],
                "mutations":[["external_ids","delete","neutron:ovn-bridge"],
                             ["external_ids","insert",["map",[["neutron:ovn-bridge","br-int"]]]]]})
        );
    }

    #[test]
    fn reply_errors_and_results() {
        let ok = json!([{"uuid":["uuid","b4e7a515-e349-4e02-8fb5-45a9c81c169b"]},{"count":1}]);
        let r = results(&ok, 2).expect("ok");
        assert_eq!(
            r[0].uuid.as_ref().map(Uuid::as_str),
            Some("b4e7a515-e349-4e02-8fb5-45a9c81c169b")
        );
        assert_eq!(r[1].count, Some(1));
        let commit = json!([{"count":1},{"error":"constraint violation","details":"dup"}]);
        match results(&commit, 1) {
            Err(Error::Transaction {
                index: 1,
                error,
                details,
            }) => {
                assert_eq!(error, "constraint violation");
                assert_eq!(details.as_deref(), Some("dup"));
            }
            other => panic!("{other:?}"),
        }
        assert!(results(&json!({"x":1}), 1).is_err());
        assert!(results(&json!([]), 1).is_err());
    }
}
