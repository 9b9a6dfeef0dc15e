//! The EC2-compatible tree (`/`, `/latest/...`, `/2009-04-04/...`) as Nova renders it:
//! the per-version meta-data dictionary, `ec2_md_print` listings, `find_path_in_tree` walks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use http::StatusCode;

use super::{hostname, BuiltinOptions, Ctx};
use crate::respond::{error, text, Resp};

/// Nova's EC2 VERSIONS, oldest first (newer AWS dates such as 2016-09-02 are 404, which is
/// how cloud-init's Ec2 datasource falls back to 2009-04-04).
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
];

/// One node of the tree; a directory may carry Nova's `_name` (public-keys/0 lists as `0=name`).
enum Node {
    Dir(Option<String>, BTreeMap<String, Node>),
    Leaf(Bytes),
    List(Vec<String>),
}

fn leaf(s: impl Into<String>) -> Node {
    Node::Leaf(Bytes::from(s.into()))
}

fn dir(entries: Vec<(&str, Node)>) -> Node {
    Node::Dir(
        None,
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// `ec2_md_print`: directory keys sorted, sub-directories with a trailing `/` (or their
/// `_name`), lists one item a line.
fn render(node: &Node) -> Bytes {
    match node {
        Node::Leaf(b) => b.clone(),
        Node::List(items) => Bytes::from(items.join("\n")),
        Node::Dir(_, children) => {
            let lines: Vec<String> = children
                .iter()
                .map(|(k, v)| match v {
                    Node::Dir(Some(name), _) => name.clone(),
                    Node::Dir(None, _) => format!("{k}/"),
                    _ => k.clone(),
                })
                .collect();
            Bytes::from(lines.join("\n"))
        }
    }
}

fn idx(v: &str) -> usize {
    VERSIONS.iter().position(|x| *x == v).unwrap_or(0)
}

/// Deterministic EC2-style id from the uuid's leading hex digits (Nova keeps a mapping table;
/// the inventory may give the real one).
fn ec2_style(prefix: &str, uuid: &str) -> String {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("{prefix}-{:0>8}", hex.to_ascii_lowercase())
}

/// `get_ec2_metadata(version)` for the instance: the {meta-data, user-data} tree.
fn tree(version: usize, ctx: &Ctx<'_>, opts: &BuiltinOptions) -> Node {
    let inst = ctx.inst;
    let host = hostname(inst, opts);
    let fixed_v4: Option<IpAddr> = ctx
        .snap
        .instance_ports(&inst.uuid)
        .flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address))
        .find(IpAddr::is_ipv4);
    let local_ipv4 = fixed_v4.unwrap_or(ctx.client_ip).to_string();
    let floating = inst
        .floating_ips
        .iter()
        .find(|i| i.is_ipv4())
        .map(ToString::to_string);
    let groups = inst
        .security_groups
        .clone()
        .unwrap_or_else(|| vec!["default".into()]);
    let mut md: Vec<(&str, Node)> = vec![
        (
            "ami-id",
            leaf(inst.ami_id.clone().unwrap_or_else(|| "ami-00000000".into())),
        ),
        ("ami-launch-index", leaf(inst.launch_index.to_string())),
        ("ami-manifest-path", leaf("FIXME")),
        (
            "instance-id",
            leaf(
                inst.ec2_instance_id
                    .clone()
                    .unwrap_or_else(|| ec2_style("i", &inst.uuid)),
            ),
        ),
        ("hostname", leaf(host.clone())),
        ("local-ipv4", leaf(local_ipv4)),
        (
            "reservation-id",
            leaf(
                inst.reservation_id
                    .clone()
                    .unwrap_or_else(|| ec2_style("r", &inst.uuid)),
            ),
        ),
        ("security-groups", Node::List(groups)),
    ];
    if !inst.public_keys.is_empty() {
        let keys = inst
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, (name, key))| {
                let entry = Node::Dir(
                    Some(format!("{i}={name}")),
                    [("openssh-key".to_owned(), leaf(key.clone()))]
                        .into_iter()
                        .collect(),
                );
                (i.to_string(), entry)
            })
            .collect();
        md.push(("public-keys", Node::Dir(None, keys)));
    }
    if version >= idx("2007-01-19") {
        md.push(("local-hostname", leaf(host.clone())));
        md.push(("public-hostname", leaf(host)));
        md.push(("public-ipv4", leaf(floating.unwrap_or_default())));
    }
    if version >= idx("2007-08-29") {
        md.push((
            "instance-type",
            leaf(inst.flavor.clone().unwrap_or_default()),
        ));
    }
    if version >= idx("2007-12-15") {
        let root = inst
            .root_device_name
            .clone()
            .unwrap_or_else(|| "/dev/vda".into());
        let ami = root.strip_prefix("/dev/").unwrap_or(&root).to_owned();
        md.push((
            "block-device-mapping",
            dir(vec![("ami", leaf(ami)), ("root", leaf(root))]),
        ));
    }
    if version >= idx("2008-02-01") {
        let az = inst.availability_zone.clone().unwrap_or_default();
        md.push(("placement", dir(vec![("availability-zone", leaf(az))])));
    }
    if version >= idx("2008-09-01") {
        md.push(("instance-action", leaf("none")));
    }
    let mut top = vec![("meta-data", dir(md))];
    if let Some(ud) = inst.user_data() {
        top.push(("user-data", Node::Leaf(ud)));
    }
    dir(top)
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "The resource could not be found.")
}

/// Answer a path of the EC2 tree (tokens after the implied "ec2").
pub fn respond(rest: &[&str], ctx: &Ctx<'_>, opts: &BuiltinOptions) -> Resp {
    let Some(first) = rest.first() else {
        let mut all: Vec<&str> = VERSIONS.to_vec();
        all.push("latest");
        return text(all.join("\n"));
    };
    let version = match *first {
        "latest" => VERSIONS.len() - 1,
        v => match VERSIONS.iter().position(|x| *x == v) {
            Some(i) => i,
            None => return not_found(),
        },
    };
    let root = tree(version, ctx, opts);
    let mut node = &root;
    for tok in &rest[1..] {
        node = match node {
            Node::Dir(_, children) => match children.get(*tok) {
                Some(n) => n,
                None => return not_found(),
            },
            _ => return not_found(),
        };
    }
    text(render(node))
}
