//! The OpenStack tree: `/openstack` (dated versions and `latest`), `/openstack/<v>` listing,
//! `meta_data.json`, `user_data`, `network_data.json`, `vendor_data.json`,
//! `vendor_data2.json`, with Nova's per-version fields (nova/api/metadata/base.py).

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use rand::RngCore;
use serde_json::{json, Map, Value};

use super::{hostname, netdata, vendor_data, BuiltinOptions, Ctx};
use crate::respond::{error, json, text, Resp};

/// Nova's OPENSTACK_VERSIONS, oldest first.
pub const VERSIONS: &[&str] = &[
    "2012-08-10", // Folsom
    "2013-04-04", // Grizzly: random_seed, password
    "2013-10-17", // Havana: vendor_data.json
    "2015-10-15", // Liberty: project_id, network_data.json
    "2016-06-30", // Newton one: devices
    "2016-10-06", // Newton two: vendor_data2.json
    "2017-02-22", // Ocata
    "2018-08-27", // Rocky
    "2020-10-14", // Victoria: dedicated_cpus
    "2025-04-04", // Epoxy
];
pub const GRIZZLY: usize = 1;
const HAVANA: usize = 2;
const LIBERTY: usize = 3;
const NEWTON_ONE: usize = 4;
const NEWTON_TWO: usize = 5;
const VICTORIA: usize = 8;

/// Index into VERSIONS of a requested version (`latest` = newest), or None if unknown.
pub fn version(v: &str) -> Option<usize> {
    if v == "latest" {
        return Some(VERSIONS.len() - 1);
    }
    VERSIONS.iter().position(|x| *x == v)
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "The resource could not be found.")
}

/// Answer a path below `/openstack` (tokens after "openstack").
pub fn respond(rest: &[&str], ctx: &Ctx<'_>, opts: &BuiltinOptions) -> Resp {
    let Some(first) = rest.first() else {
        // Nova hides versions dated in the future.
        let today = today();
        let mut list: Vec<&str> = VERSIONS
            .iter()
            .copied()
            .filter(|v| *v <= today.as_str())
            .collect();
        list.push("latest");
        return text(list.join("\n"));
    };
    let Some(v) = version(first) else {
        return not_found();
    };
    let user_data = ctx.inst.user_data();
    if rest.len() == 1 {
        let mut names = vec!["meta_data.json"];
        if user_data.is_some() {
            names.push("user_data");
        }
        if v >= GRIZZLY {
            names.push("password");
        }
        if v >= HAVANA {
            names.push("vendor_data.json");
        }
        if v >= LIBERTY {
            names.push("network_data.json");
        }
        if v >= NEWTON_TWO {
            names.push("vendor_data2.json");
        }
        return text(names.join("\n"));
    }
    let item = rest[1..].join("/");
    match item.as_str() {
        "meta_data.json" => json(to_bytes(&meta_data(ctx, opts, v))),
        "user_data" => match user_data {
            Some(d) => text(d),
            None => not_found(),
        },
        // Nova serves network_data.json at every version (only the listing hides it).
        "network_data.json" => text(to_bytes(&netdata::network_data(ctx.snap, &ctx.inst.uuid))),
        "vendor_data.json" if v >= HAVANA => json(to_bytes(&vendor_data(ctx))),
        "vendor_data2.json" if v >= NEWTON_TWO => {
            json(to_bytes(&json!({ "static": vendor_data(ctx) })))
        }
        _ => not_found(),
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// meta_data.json for version index `v`.
pub fn meta_data(ctx: &Ctx<'_>, opts: &BuiltinOptions, v: usize) -> Value {
    let inst = ctx.inst;
    let mut m = Map::new();
    m.insert("uuid".into(), json!(inst.uuid));
    if !inst.meta.is_empty() {
        m.insert("meta".into(), json!(inst.meta));
    }
    if !inst.public_keys.is_empty() {
        m.insert("public_keys".into(), json!(inst.public_keys));
        let keys: Vec<Value> = inst
            .public_keys
            .iter()
            .map(|(name, data)| json!({"name": name, "type": "ssh", "data": data}))
            .collect();
        m.insert("keys".into(), Value::Array(keys));
    }
    m.insert("hostname".into(), json!(hostname(inst, opts)));
    m.insert(
        "name".into(),
        json!(inst.name.clone().unwrap_or_else(|| inst.uuid.clone())),
    );
    m.insert("launch_index".into(), json!(inst.launch_index));
    m.insert("availability_zone".into(), json!(inst.availability_zone));
    if v >= GRIZZLY {
        let mut seed = [0u8; 512];
        rand::rng().fill_bytes(&mut seed);
        m.insert(
            "random_seed".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(seed)),
        );
    }
    if v >= LIBERTY {
        m.insert("project_id".into(), json!(inst.project_id));
    }
    if v >= NEWTON_ONE {
        m.insert("devices".into(), json!(inst.devices));
    }
    if v >= VICTORIA {
        m.insert("dedicated_cpus".into(), json!([]));
    }
    Value::Object(m)
}

/// Today's UTC date as `YYYY-MM-DD` (days-to-civil, proleptic Gregorian).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert!(today().as_str() > "2024-01-01");
    }
}
