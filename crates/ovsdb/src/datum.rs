//! OVSDB values (RFC 7047 §5.1): atoms, sets and maps, read from their JSON wire forms with
//! the column's schema type (a one-element set arrives as the bare atom, `["set",[…]]`
//! otherwise; maps as `["map",[[k,v],…]]`; refs as `["uuid","…"]`) and written back to them.
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};

use crate::schema::{AtomicType, ColumnType};

/// A row UUID in its canonical lowercase text form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case; kept lowercase).
    pub fn parse(s: &str) -> Option<Uuid> {
        let b = s.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        ok.then(|| Uuid(s.to_ascii_lowercase()))
    }

    /// The all-zero UUID (a uuid column's default; "no transaction" for monitor_cond_since).
    pub fn zero() -> Uuid {
        Uuid("00000000-0000-0000-0000-000000000000".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Uuid> for Value {
    fn from(u: Uuid) -> Value {
        json!(["uuid", u.0])
    }
}

/// `["named-uuid", name]`: a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// One OVSDB atom. Ordered (reals by `total_cmp`) so sets and maps can be `BTree`s.
#[derive(Clone, Debug)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    Uuid(Uuid),
}

impl Atom {
    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<&Uuid> {
        match self {
            Atom::Uuid(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Atom::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.0]),
        }
    }

    /// Read an atom of type `ty`; `Err` names what was wrong.
    pub fn from_json(ty: AtomicType, v: &Value) -> Result<Atom, String> {
        let wrong = || format!("expected {ty:?}, got {v}");
        Ok(match ty {
            AtomicType::Integer => Atom::Integer(v.as_i64().ok_or_else(wrong)?),
            // A real may be written without a fraction ("1"): take any JSON number.
            AtomicType::Real => Atom::Real(v.as_f64().ok_or_else(wrong)?),
            AtomicType::Boolean => Atom::Boolean(v.as_bool().ok_or_else(wrong)?),
            AtomicType::String => Atom::String(v.as_str().ok_or_else(wrong)?.to_owned()),
            AtomicType::Uuid => match v.as_array().map(Vec::as_slice) {
                Some([Value::String(tag), Value::String(u)]) if tag == "uuid" => {
                    Atom::Uuid(Uuid::parse(u).ok_or_else(wrong)?)
                }
                _ => return Err(wrong()),
            },
        })
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Atom) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b)) => a.cmp(b),
            (Atom::Uuid(a), Atom::Uuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Atom) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Atom) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

impl From<&str> for Atom {
    fn from(s: &str) -> Atom {
        Atom::String(s.to_owned())
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Atom {
        Atom::String(s)
    }
}

impl From<i64> for Atom {
    fn from(i: i64) -> Atom {
        Atom::Integer(i)
    }
}

impl From<bool> for Atom {
    fn from(b: bool) -> Atom {
        Atom::Boolean(b)
    }
}

impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Atom {
        Atom::Uuid(u)
    }
}

impl From<Atom> for Value {
    fn from(a: Atom) -> Value {
        a.to_json()
    }
}

/// A column's value. Scalars are one-element sets, optional values zero- or one-element sets.
///
/// Kept as sorted vectors (sets without duplicates, maps sorted by unique key), not trees:
/// nearly every value holds zero to a few elements, and a replica holds many of them. Build
/// them with [`Datum::set`], [`Datum::map`] or [`Datum::str_map`] to keep that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Set(Vec<Atom>),
    Map(Vec<(Atom, Atom)>),
}

/// `atom` compared with the string atom `key`, without building one.
fn cmp_str(atom: &Atom, key: &str) -> Ordering {
    match atom {
        Atom::String(s) => s.as_str().cmp(key),
        other => other.rank().cmp(&Atom::String(String::new()).rank()),
    }
}

impl Datum {
    /// The single atom of a scalar (or a 0..1 column that holds one).
    pub fn atom(&self) -> Option<&Atom> {
        match self {
            Datum::Set(s) if s.len() == 1 => s.first(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.atom()?.as_str()
    }

    pub fn as_uuid(&self) -> Option<&Uuid> {
        self.atom()?.as_uuid()
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.atom()?.as_i64()
    }

    pub fn as_bool(&self) -> Option<bool> {
        self.atom()?.as_bool()
    }

    /// A set's elements, in order.
    pub fn as_set(&self) -> Option<&[Atom]> {
        match self {
            Datum::Set(s) => Some(s),
            Datum::Map(_) => None,
        }
    }

    /// A map's pairs, in key order.
    pub fn as_map(&self) -> Option<&[(Atom, Atom)]> {
        match self {
            Datum::Map(m) => Some(m),
            Datum::Set(_) => None,
        }
    }

    /// `map[key]`.
    pub fn map_get(&self, key: &Atom) -> Option<&Atom> {
        let m = self.as_map()?;
        let i = m.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        m.get(i).map(|(_, v)| v)
    }

    /// `map[key]` for a string-keyed, string-valued map (`external_ids`, `options`).
    pub fn map_str(&self, key: &str) -> Option<&str> {
        let m = self.as_map()?;
        let i = m.binary_search_by(|(k, _)| cmp_str(k, key)).ok()?;
        m.get(i)?.1.as_str()
    }

    /// A map from pairs (a repeated key keeps its last value).
    pub fn map(pairs: impl IntoIterator<Item = (Atom, Atom)>) -> Datum {
        let m: BTreeMap<Atom, Atom> = pairs.into_iter().collect();
        Datum::Map(m.into_iter().collect())
    }

    /// A string-to-string map, for writes (`external_ids`).
    pub fn str_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Datum {
        Datum::map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())))
    }

    /// A set of atoms, for writes and conditions.
    pub fn set(atoms: impl IntoIterator<Item = Atom>) -> Datum {
        let mut v: Vec<Atom> = atoms.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Datum::Set(v)
    }

    /// The wire form (a one-element set as the bare atom).
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Set(s) if s.len() == 1 => s.first().map(Atom::to_json).unwrap_or_default(),
            Datum::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Datum::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Read a value of column type `ty`; `Err` names what was wrong.
    pub fn from_json(ty: &ColumnType, v: &Value) -> Result<Datum, String> {
        let tagged = match v.as_array().map(Vec::as_slice) {
            Some([Value::String(tag), Value::Array(items)]) if tag == "set" || tag == "map" => {
                Some((tag.as_str(), items))
            }
            _ => None,
        };
        match (ty.value, tagged) {
            (Some(vt), Some(("map", pairs))) => {
                let mut m = Vec::with_capacity(pairs.len());
                for p in pairs {
                    let Some([k, val]) = p.as_array().map(Vec::as_slice) else {
                        return Err(format!("bad map pair {p}"));
                    };
                    m.push((Atom::from_json(ty.key, k)?, Atom::from_json(vt, val)?));
                }
                // The server sends unique keys; a repeated one keeps its first value.
                m.sort_by(|a, b| a.0.cmp(&b.0));
                m.dedup_by(|a, b| a.0 == b.0);
                Ok(Datum::Map(m))
            }
            (Some(_), _) => Err(format!("expected a map, got {v}")),
            (None, Some(("set", items))) => {
                let mut s = items
                    .iter()
                    .map(|a| Atom::from_json(ty.key, a))
                    .collect::<Result<Vec<_>, _>>()?;
                s.sort_unstable();
                s.dedup();
                Ok(Datum::Set(s))
            }
            (None, Some(_)) => Err(format!("expected a set, got {v}")),
            (None, None) => Ok(Datum::Set(vec![Atom::from_json(ty.key, v)?])),
        }
    }

    /// `update2` set diff: each element present is removed, each absent one added.
    pub(crate) fn toggle(set: &mut Vec<Atom>, changes: Vec<Atom>) {
        for a in changes {
            match set.binary_search(&a) {
                Ok(i) => {
                    set.remove(i);
                }
                Err(i) => set.insert(i, a),
            }
        }
    }

    /// `update2` map diff: a new key is added, a pair equal to the current one removed, a
    /// different value replaces the current one.
    pub(crate) fn merge(map: &mut Vec<(Atom, Atom)>, changes: Vec<(Atom, Atom)>) {
        for (k, v) in changes {
            match map.binary_search_by(|(mk, _)| mk.cmp(&k)) {
                Ok(i) if map[i].1 == v => {
                    map.remove(i);
                }
                Ok(i) => map[i].1 = v,
                Err(i) => map.insert(i, (k, v)),
            }
        }
    }
}

impl From<Datum> for Value {
    fn from(d: Datum) -> Value {
        d.to_json()
    }
}

impl From<&Datum> for Value {
    fn from(d: &Datum) -> Value {
        d.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(key: AtomicType, value: Option<AtomicType>, min: u64, max: Option<u64>) -> ColumnType {
        ColumnType {
            key,
            value,
            min,
            max,
        }
    }

    #[test]
    fn wire_forms_round_trip() {
        let set = ty(AtomicType::String, None, 0, None);
        let one = Datum::from_json(&set, &json!("fa:16:3e:00:00:01 10.0.0.5")).expect("bare");
        assert_eq!(one.as_str(), Some("fa:16:3e:00:00:01 10.0.0.5"));
        assert_eq!(one.to_json(), json!("fa:16:3e:00:00:01 10.0.0.5"));
        let two = Datum::from_json(&set, &json!(["set", ["a", "b"]])).expect("set");
        assert_eq!(two.to_json(), json!(["set", ["a", "b"]]));
        let empty = Datum::from_json(&set, &json!(["set", []])).expect("empty");
        assert_eq!(empty.to_json(), json!(["set", []]));

        let r = ty(AtomicType::Uuid, None, 0, Some(1));
        let u = "B4E7A515-E349-4E02-8FB5-45A9C81C169B";
        let d = Datum::from_json(&r, &json!(["uuid", u])).expect("uuid");
        assert_eq!(
            d.as_uuid().map(Uuid::as_str),
            Some(u.to_ascii_lowercase().as_str())
        );

        let m = ty(AtomicType::String, Some(AtomicType::String), 0, None);
        let d = Datum::from_json(&m, &json!(["map", [["k", "v {\"}"]]])).expect("map");
        assert_eq!(d.map_str("k"), Some("v {\"}"));
        assert_eq!(d.to_json(), json!(["map", [["k", "v {\"}"]]]));

        let real = ty(AtomicType::Real, None, 1, Some(1));
        assert_eq!(
            Datum::from_json(&real, &json!(1))
                .expect("real")
                .atom()
                .and_then(Atom::as_f64),
            Some(1.0)
        );
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        let m = ty(AtomicType::String, Some(AtomicType::String), 0, None);
        let s = ty(AtomicType::Integer, None, 0, None);
        let u = ty(AtomicType::Uuid, None, 1, Some(1));
        for (t, v) in [
            (&m, json!("x")),
            (&m, json!(["map", [["k"]]])),
            (&m, json!(["map", [[1, "v"]]])),
            (&m, json!(["set", []])),
            (&s, json!(["map", []])),
            (&s, json!(["set", ["x"]])),
            (&s, json!(1.5)),
            (&s, json!(null)),
            (&u, json!(["uuid", "nope"])),
            (&u, json!(["uuid"])),
            (&u, json!({"uuid": 1})),
        ] {
            assert!(Datum::from_json(t, &v).is_err(), "{v}");
        }
    }

    #[test]
    fn uuid_parsing() {
        assert!(Uuid::parse("00000000-0000-0000-0000-000000000000").is_some());
        assert!(Uuid::parse("0000000000000-0000-0000-000000000000").is_none());
        assert!(Uuid::parse("g0000000-0000-0000-0000-000000000000").is_none());
        assert!(Uuid::parse("").is_none());
    }
}
