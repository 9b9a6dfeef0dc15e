//! The local copy of the monitored rows, and the `update2`/`update3` rules that fold the
//! server's changes into it (ovsdb-server(7) "update2 notification"):
//! - `initial`/`insert`: the row, with omitted columns at their default value;
//! - `delete`: the row is gone;
//! - `modify`: per column, a scalar or 0..1 column gets the new value, a set column the
//!   symmetric difference, a map column pairs where a new key is added, an equal pair
//!   removed and a different value replaced.
//!
//! A message is parsed and checked in full (updates.rs) before anything is applied, so a
//! malformed one leaves the replica as it was. Columns and tables outside the monitor are
//! dropped while parsing.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::datum::{Datum, Uuid};
use crate::error::{Error, Result};
use crate::schema::Schema;
use crate::updates::{Update, Updates, Values};

/// One row: the monitored columns' values (all of them, defaults filled in). The column
/// names are shared by every row of the table; the values are in the same (sorted) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Datum>,
}

impl Row {
    /// A row from `(column, value)` pairs, for fakes and tests (the client builds its rows
    /// from the wire). A column named twice keeps its last value.
    pub fn from_columns(columns: impl IntoIterator<Item = (String, Datum)>) -> Row {
        let sorted: BTreeMap<String, Datum> = columns.into_iter().collect();
        let (names, values): (Vec<String>, Vec<Datum>) = sorted.into_iter().unzip();
        Row {
            names: names.into(),
            values,
        }
    }

    pub fn get(&self, column: &str) -> Option<&Datum> {
        let i = self
            .names
            .binary_search_by(|c| c.as_str().cmp(column))
            .ok()?;
        self.values.get(i)
    }

    /// Every column with its value, in column-name order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Datum)> + '_ {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// A string scalar.
    pub fn str(&self, column: &str) -> Option<&str> {
        self.get(column)?.as_str()
    }

    /// A reference or uuid scalar (or a 0..1 column holding one).
    pub fn uuid(&self, column: &str) -> Option<&Uuid> {
        self.get(column)?.as_uuid()
    }

    pub fn i64(&self, column: &str) -> Option<i64> {
        self.get(column)?.as_i64()
    }

    pub fn bool(&self, column: &str) -> Option<bool> {
        self.get(column)?.as_bool()
    }

    /// `column[key]` of a string map (`external_ids`).
    pub fn map_str(&self, column: &str, key: &str) -> Option<&str> {
        self.get(column)?.map_str(key)
    }

    /// The string elements of a set column (`mac`).
    pub fn strs(&self, column: &str) -> Vec<&str> {
        self.get(column)
            .and_then(Datum::as_set)
            .map(|s| s.iter().filter_map(|a| a.as_str()).collect())
            .unwrap_or_default()
    }

    /// The uuid elements of a set column (`additional_chassis`).
    pub fn uuids(&self, column: &str) -> Vec<&Uuid> {
        self.get(column)
            .and_then(Datum::as_set)
            .map(|s| s.iter().filter_map(|a| a.as_uuid()).collect())
            .unwrap_or_default()
    }
}

/// One table's rows by UUID.
pub type Table = HashMap<Uuid, Arc<Row>>;

/// The monitored tables.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    pub tables: BTreeMap<String, Table>,
}

impl Replica {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    pub fn row(&self, table: &str, uuid: &Uuid) -> Option<&Arc<Row>> {
        self.tables.get(table)?.get(uuid)
    }

    /// Every row of `table`.
    pub fn rows<'a>(&'a self, table: &str) -> impl Iterator<Item = (&'a Uuid, &'a Arc<Row>)> + 'a {
        self.tables.get(table).into_iter().flat_map(|t| t.iter())
    }
}

/// One row that changed: `old` absent for an insert, `new` absent for a delete.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    pub table: String,
    pub uuid: Uuid,
    pub old: Option<Arc<Row>>,
    pub new: Option<Arc<Row>>,
}

/// Columns kept per table (the monitor resolved against the schema), sorted and unique.
pub(crate) type Columns = BTreeMap<String, Arc<[String]>>;

fn apply_diff(schema: &Schema, table: &str, row: &mut Row, diff: Values) -> Result<()> {
    for (i, d) in diff {
        let (Some(c), Some(old)) = (row.names.get(i), row.values.get_mut(i)) else {
            continue;
        };
        let Some(ty) = schema.column(table, c) else {
            continue;
        };
        match (old, d) {
            (Datum::Map(old), Datum::Map(changes)) => Datum::merge(old, changes),
            (Datum::Set(old), Datum::Set(changes)) if ty.is_multi_set() => {
                Datum::toggle(old, changes)
            }
            (old @ Datum::Set(_), new @ Datum::Set(_)) => *old = new,
            _ => {
                return Err(Error::protocol(format!(
                    "{table} {c}: diff of the wrong kind"
                )))
            }
        }
    }
    Ok(())
}

/// A row of `table` from the columns the server sent, the others at their defaults.
fn full_row(schema: &Schema, names: &Arc<[String]>, table: &str, given: Values) -> Row {
    let mut values: Vec<Datum> = names
        .iter()
        .map(|c| {
            schema
                .column(table, c)
                .map_or(Datum::Set(Vec::new()), |ty| ty.default_datum())
        })
        .collect();
    for (i, d) in given {
        if let Some(v) = values.get_mut(i) {
            *v = d;
        }
    }
    Row {
        names: names.clone(),
        values,
    }
}

/// Fold parsed `<table-updates2>` into `replica`, appending what changed to `changes`.
pub(crate) fn fold(
    replica: &mut Replica,
    schema: &Schema,
    columns: &Columns,
    parsed: Updates,
    changes: &mut Vec<RowChange>,
) -> Result<()> {
    // Check every modify has its row before changing anything.
    for (t, u, up) in &parsed {
        if matches!(up, Update::Modify(_)) && replica.row(t, u).is_none() {
            return Err(Error::protocol(format!(
                "{t} {u}: modify of a row we do not have"
            )));
        }
    }
    for (t, uuid, up) in parsed {
        let Some(names) = columns.get(&t) else {
            continue;
        };
        let table = replica.tables.entry(t.clone()).or_default();
        let old = table.get(&uuid).cloned();
        let new = match (up, old.as_deref()) {
            (Update::Row(given), _) => Some(Arc::new(full_row(schema, names, &t, given))),
            (Update::Delete, _) => None,
            (Update::Modify(diff), Some(row)) => {
                let mut row = row.clone();
                apply_diff(schema, &t, &mut row, diff)?;
                Some(Arc::new(row))
            }
            // Checked above; a row update never repeats a uuid within one message.
            (Update::Modify(_), None) => continue,
        };
        match &new {
            Some(r) => table.insert(uuid.clone(), r.clone()),
            None => table.remove(&uuid),
        };
        if old.is_some() || new.is_some() {
            changes.push(RowChange {
                table: t,
                uuid,
                old,
                new,
            });
        }
    }
    Ok(())
}

/// The changes that turn `old` into `new` (after a full resync), in table order.
pub(crate) fn difference(old: &Replica, new: &Replica) -> Vec<RowChange> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        old.tables.keys().chain(new.tables.keys()).collect();
    let empty = Table::new();
    for t in names {
        let o = old.tables.get(t).unwrap_or(&empty);
        let n = new.tables.get(t).unwrap_or(&empty);
        for (u, r) in o {
            match n.get(u) {
                None => out.push(RowChange {
                    table: t.clone(),
                    uuid: u.clone(),
                    old: Some(r.clone()),
                    new: None,
                }),
                Some(nr) if nr != r => out.push(RowChange {
                    table: t.clone(),
                    uuid: u.clone(),
                    old: Some(r.clone()),
                    new: Some(nr.clone()),
                }),
                Some(_) => {}
            }
        }
        for (u, r) in n {
            if !o.contains_key(u) {
                out.push(RowChange {
                    table: t.clone(),
                    uuid: u.clone(),
                    old: None,
                    new: Some(r.clone()),
                });
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
