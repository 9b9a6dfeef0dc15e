//! Reading `<table-updates2>` off the wire row by row: the tables and rows objects are walked
//! with serde visitors, each row update is parsed on its own and turned into typed values at
//! once, and tables outside the monitor are skipped without being built. So the initial view
//! of a large database never exists as one big JSON tree next to the replica.
//!
//! Also here: the two envelopes that carry table-updates2, the `monitor_cond_since` reply
//! `[found, last_txn_id, updates]` and the `update2`/`update3` params.
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::datum::{Datum, Uuid};
use crate::error::{Error, Result};
use crate::replica::Columns;
use crate::schema::{Schema, TableSchema};

/// Values by their column's index in the table's [`Columns`].
pub(crate) type Values = Vec<(usize, Datum)>;

pub(crate) enum Update {
    /// `initial` or `insert`: the given columns (defaults not yet filled).
    Row(Values),
    Delete,
    Modify(Values),
}

/// Checked, typed row updates: (table, row, update).
pub(crate) type Updates = Vec<(String, Uuid, Update)>;

/// What the parse needs to know.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) schema: &'a Schema,
    pub(crate) columns: &'a Columns,
}

/// One `<row-update2>` of `table`.
fn row_update(
    table: &str,
    keep: &[String],
    ts: &TableSchema,
    u: &str,
    ru: &Value,
) -> Result<(Uuid, Update)> {
    let uuid =
        Uuid::parse(u).ok_or_else(|| Error::protocol(format!("{table}: bad row uuid {u:?}")))?;
    let Some((kind, body)) = ru
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Err(Error::protocol(format!("{table} {u}: bad row update {ru}")));
    };
    let cols = || -> Result<Values> {
        let o = body
            .as_object()
            .ok_or_else(|| Error::protocol(format!("{table} {u}: {kind} is not an object")))?;
        let mut m = Vec::with_capacity(o.len());
        for (c, v) in o {
            // Columns we did not ask for: never held.
            let (Ok(i), Some(ty)) = (keep.binary_search(c), ts.columns.get(c)) else {
                continue;
            };
            let d = Datum::from_json(ty, v)
                .map_err(|e| Error::protocol(format!("{table} {u} {c}: {e}")))?;
            m.push((i, d));
        }
        Ok(m)
    };
    let up = match kind.as_str() {
        "initial" | "insert" => Update::Row(cols()?),
        "modify" => Update::Modify(cols()?),
        "delete" => Update::Delete,
        _ => {
            return Err(Error::protocol(format!(
                "{table} {u}: unknown row update {kind:?}"
            )))
        }
    };
    Ok((uuid, up))
}

/// Seed for a `<table-updates2>` object.
struct Tables<'a>(Ctx<'a>);

impl<'de> DeserializeSeed<'de> for Tables<'_> {
    type Value = Updates;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Updates, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Tables<'_> {
    type Value = Updates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table-updates2 object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Updates, A::Error> {
        let mut out = Vec::new();
        while let Some(t) = map.next_key::<String>()? {
            match (self.0.columns.get(&t), self.0.schema.tables.get(&t)) {
                (Some(keep), Some(ts)) => map.next_value_seed(Rows {
                    table: &t,
                    keep,
                    ts,
                    out: &mut out,
                })?,
                // A table we did not ask for: skipped, never built.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Seed for one table's rows object; pushes into `out`.
struct Rows<'a, 'o> {
    table: &'a str,
    keep: &'a [String],
    ts: &'a TableSchema,
    out: &'o mut Updates,
}

impl<'de> DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the rows of table {}", self.table)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(u) = map.next_key::<String>()? {
            let ru: Value = map.next_value()?;
            let (uuid, up) =
                row_update(self.table, self.keep, self.ts, &u, &ru).map_err(de::Error::custom)?;
            self.out.push((self.table.to_owned(), uuid, up));
        }
        Ok(())
    }
}

fn wire<E: fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::protocol(format!("{what}: {e}"))
}

/// A `<table-updates2>` object on its own.
pub(crate) fn parse(ctx: Ctx<'_>, json: &str) -> Result<Updates> {
    let mut de = serde_json::Deserializer::from_str(json);
    let v = Tables(ctx)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    v.map_err(wire("table-updates2"))
}

/// The `monitor_cond_since` reply: `(found, last_txn_id, updates)`.
pub(crate) fn parse_since_reply(ctx: Ctx<'_>, json: &str) -> Result<(bool, String, Updates)> {
    struct Reply<'a>(Ctx<'a>);
    impl<'de> Visitor<'de> for Reply<'_> {
        type Value = (bool, String, Updates);
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("[found, last_txn_id, table-updates2]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let missing = || de::Error::custom("too short");
            let found: bool = seq.next_element()?.ok_or_else(missing)?;
            let txn: String = seq.next_element()?.ok_or_else(missing)?;
            let updates = seq.next_element_seed(Tables(self.0))?.ok_or_else(missing)?;
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(de::Error::custom("too long"));
            }
            Ok((found, txn, updates))
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let v =
        de::Deserializer::deserialize_seq(&mut de, Reply(ctx)).and_then(|v| de.end().map(|()| v));
    v.map_err(wire("monitor_cond_since reply"))
}

/// `update2` params `[monitor, updates]` / `update3` params `[monitor, last_txn_id, updates]`.
pub(crate) enum Notice {
    /// For our data monitor (`monitor` matched): the transaction id (update3) and updates.
    Data {
        txn: Option<String>,
        updates: Updates,
    },
    /// For another monitor: its id and its updates, unparsed.
    Other { monitor: Value, updates: Value },
}

pub(crate) fn parse_notice(
    ctx: Ctx<'_>,
    update3: bool,
    data_monitor: &str,
    json: &str,
) -> Result<Notice> {
    struct Params<'a> {
        ctx: Ctx<'a>,
        update3: bool,
        data_monitor: &'a str,
    }
    impl<'de> Visitor<'de> for Params<'_> {
        type Value = Notice;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("[monitor, (last_txn_id,) table-updates2]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Notice, A::Error> {
            let missing = || de::Error::custom("too short");
            let monitor: Value = seq.next_element()?.ok_or_else(missing)?;
            let txn: Option<String> = match self.update3 {
                true => Some(seq.next_element()?.ok_or_else(missing)?),
                false => None,
            };
            let notice = if monitor.as_str() == Some(self.data_monitor) {
                let updates = seq
                    .next_element_seed(Tables(self.ctx))?
                    .ok_or_else(missing)?;
                Notice::Data { txn, updates }
            } else {
                let updates: Value = seq.next_element()?.ok_or_else(missing)?;
                Notice::Other { monitor, updates }
            };
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(de::Error::custom("too long"));
            }
            Ok(notice)
        }
    }
    let p = Params {
        ctx,
        update3,
        data_monitor,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    let v = de::Deserializer::deserialize_seq(&mut de, p).and_then(|v| de.end().map(|()| v));
    v.map_err(wire("update params"))
}
