//! The parts of a database schema (RFC 7047 §3.2) the client needs: each column's atomic
//! key/value types and its `min`/`max`, which decide how a value is read (a bare atom is a
//! one-element set), what an omitted column is (its default) and how an `update2` diff applies.
use std::collections::BTreeMap;

use serde_json::Value;

use crate::datum::{Atom, Datum, Uuid};
use crate::error::{Error, Result};

/// RFC 7047 `<atomic-type>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicType {
    Integer,
    Real,
    Boolean,
    String,
    Uuid,
}

impl AtomicType {
    fn parse(v: &Value) -> Result<AtomicType> {
        // A <base-type> is the atomic type's name or an object whose "type" names it.
        let name = match v {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("type").and_then(Value::as_str).unwrap_or(""),
            _ => "",
        };
        Ok(match name {
            "integer" => AtomicType::Integer,
            "real" => AtomicType::Real,
            "boolean" => AtomicType::Boolean,
            "string" => AtomicType::String,
            "uuid" => AtomicType::Uuid,
            _ => return Err(Error::protocol(format!("schema: bad base type {v}"))),
        })
    }

    /// The type's default atom (ovsdb-data.c `ovsdb_atom_init_default`).
    pub fn default_atom(self) -> Atom {
        match self {
            AtomicType::Integer => Atom::Integer(0),
            AtomicType::Real => Atom::Real(0.0),
            AtomicType::Boolean => Atom::Boolean(false),
            AtomicType::String => Atom::String(String::new()),
            AtomicType::Uuid => Atom::Uuid(Uuid::zero()),
        }
    }
}

/// RFC 7047 `<type>` of a column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnType {
    pub key: AtomicType,
    /// Present for map columns.
    pub value: Option<AtomicType>,
    pub min: u64,
    /// `None` is "unlimited".
    pub max: Option<u64>,
}

impl ColumnType {
    fn parse(v: &Value) -> Result<ColumnType> {
        let Value::Object(o) = v else {
            return Ok(ColumnType {
                key: AtomicType::parse(v)?,
                value: None,
                min: 1,
                max: Some(1),
            });
        };
        let key = AtomicType::parse(o.get("key").unwrap_or(&Value::Null))?;
        let value = o.get("value").map(AtomicType::parse).transpose()?;
        let min = match o.get("min") {
            None => 1,
            Some(m) => m
                .as_u64()
                .ok_or_else(|| Error::protocol(format!("schema: bad min {m}")))?,
        };
        let max = match o.get("max") {
            None => Some(1),
            Some(Value::String(s)) if s == "unlimited" => None,
            Some(m) => Some(
                m.as_u64()
                    .ok_or_else(|| Error::protocol(format!("schema: bad max {m}")))?,
            ),
        };
        Ok(ColumnType {
            key,
            value,
            min,
            max,
        })
    }

    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// A set that can hold more than one element: `update2` sends its changes as the
    /// symmetric difference. Scalars and 0..1 columns get their new value instead.
    pub fn is_multi_set(&self) -> bool {
        !self.is_map() && self.max != Some(1)
    }

    /// The value of a column the server omitted from an `initial`/`insert` row.
    pub fn default_datum(&self) -> Datum {
        match (self.min, self.value) {
            (0, None) => Datum::Set(Vec::new()),
            (0, Some(_)) => Datum::Map(Vec::new()),
            (_, None) => Datum::Set(vec![self.key.default_atom()]),
            (_, Some(v)) => Datum::Map(vec![(self.key.default_atom(), v.default_atom())]),
        }
    }
}

/// One table's columns.
#[derive(Clone, Debug, Default)]
pub struct TableSchema {
    pub columns: BTreeMap<String, ColumnType>,
}

/// A database schema as `get_schema` returns it, reduced to what the client uses.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub name: String,
    pub version: String,
    pub tables: BTreeMap<String, TableSchema>,
}

impl Schema {
    /// Read a `<database-schema>`.
    pub fn from_json(v: &Value) -> Result<Schema> {
        let bad = |what: &str| Error::protocol(format!("schema: {what}"));
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no name"))?;
        let version = v.get("version").and_then(Value::as_str).unwrap_or("");
        let tables = v
            .get("tables")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no tables"))?;
        let mut out = Schema {
            name: name.to_owned(),
            version: version.to_owned(),
            tables: BTreeMap::new(),
        };
        for (t, tv) in tables {
            let cols = tv
                .get("columns")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(&format!("table {t} has no columns")))?;
            let mut ts = TableSchema::default();
            for (c, cv) in cols {
                let ty = cv
                    .get("type")
                    .ok_or_else(|| bad(&format!("{t}.{c} has no type")))?;
                let ty = ColumnType::parse(ty).map_err(|e| bad(&format!("{t}.{c}: {e}")))?;
                ts.columns.insert(c.clone(), ty);
            }
            out.tables.insert(t.clone(), ts);
        }
        Ok(out)
    }

    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnType> {
        self.tables.get(table)?.columns.get(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_southbound_column_types() {
        let v: Value = serde_json::from_str(include_str!("../tests/data/sb-schema-subset.json"))
            .expect("schema json");
        let s = Schema::from_json(&v).expect("schema");
        assert_eq!(s.name, "OVN_Southbound");
        let pb = |c: &str| s.column("Port_Binding", c).expect(c).clone();
        assert!(pb("mac").is_multi_set());
        assert!(
            !pb("chassis").is_multi_set(),
            "weak ref 0..1 is replaced, not diffed"
        );
        assert!(pb("external_ids").is_map());
        assert_eq!(
            pb("tunnel_key").default_datum(),
            Datum::Set(vec![Atom::Integer(0)])
        );
        assert_eq!(pb("up").default_datum(), Datum::Set(Vec::new()));
        assert!(pb("additional_chassis").is_multi_set());
    }
}
