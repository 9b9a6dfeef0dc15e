//! Tests of the loader: precedence over all five layers, oslo substitution, config-dir
//! order, environment names, one-line errors for every origin, deprecated names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

static OPTS: &[Opt] = &[
    Opt::new("DEFAULT", "state_path", Kind::Path, "State").default("/var/lib/neutron"),
    Opt::new("DEFAULT", "metadata_proxy_socket", Kind::Path, "Socket")
        .default("$state_path/metadata_proxy"),
    Opt::new("DEFAULT", "debug", Kind::Bool, "Debug").default("false"),
    Opt::new("DEFAULT", "port", Kind::Port, "Port").default("8775"),
    Opt::new(
        "DEFAULT",
        "workers",
        Kind::Int { min: 0, max: 64 },
        "Workers",
    )
    .computed(|| "2".into(), "CPUs/2"),
    Opt::new("DEFAULT", "secret", Kind::Str, "Secret"),
    Opt::new("DEFAULT", "nova_metadata_host", Kind::Str, "Nova")
        .deprecated(&[("DEFAULT", "nova_metadata_ip")]),
    Opt::new(
        "DEFAULT",
        "protocol",
        Kind::Choice(&["http", "https"]),
        "Proto",
    )
    .default("http"),
    Opt::new("DEFAULT", "bind", Kind::List, "Binds"),
    Opt::new("DEFAULT", "a", Kind::Str, "a"),
    Opt::new("DEFAULT", "b", Kind::Str, "b"),
    Opt::new("ovn", "host", Kind::Str, "OVN host").long("ovn-host"),
    Opt::new("ovn", "url", Kind::Str, "OVN url")
        .long("ovn-url")
        .default("tcp:$host:6642"),
    Opt::new(
        "ovn",
        "timeout",
        Kind::Seconds {
            min: 0.0,
            max: 60.0,
        },
        "T",
    )
    .long("ovn-timeout")
    .default("5"),
];
static SCHEMA: Schema = Schema::new(OPTS);

fn ini(text: &str) -> Ini {
    Ini::parse_str(text, Path::new("/etc/t.ini")).expect("parses")
}

fn with_ini(text: &str) -> ConfigResult<Values> {
    Loader::new(&SCHEMA).ini(ini(text)).load().map(|l| l.values)
}

fn err(r: ConfigResult<Loaded>) -> String {
    r.expect_err("must fail").to_string()
}

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ns-ini-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn defaults_are_substituted_and_typed() {
    let v = Loader::new(&SCHEMA).load().expect("defaults").values;
    assert_eq!(
        v.path("DEFAULT", "metadata_proxy_socket").expect("path"),
        Some(PathBuf::from("/var/lib/neutron/metadata_proxy"))
    );
    assert!(!v.bool("DEFAULT", "debug").expect("bool"));
    assert_eq!(v.port("DEFAULT", "port").expect("port"), 8775);
    assert_eq!(v.int::<usize>("DEFAULT", "workers").expect("int"), 2);
    assert_eq!(v.opt_str("DEFAULT", "secret").expect("str"), None);
    assert_eq!(v.str("DEFAULT", "secret").expect("str"), "");
    assert_eq!(
        v.list("DEFAULT", "bind").expect("list"),
        Vec::<String>::new()
    );
    assert_eq!(v.choice("DEFAULT", "protocol").expect("choice"), "http");
    assert_eq!(
        v.seconds("ovn", "timeout").expect("secs"),
        Duration::from_secs(5)
    );
    assert!(v.origin("DEFAULT", "port").expect("origin").is_default());
    assert!(!v.is_set("DEFAULT", "port").expect("set"));
    // Unset $host reads as "" in the default, as oslo's None does.
    assert_eq!(v.str("ovn", "url").expect("str"), "tcp::6642");
}

#[test]
fn precedence_default_file_dir_env_flag() {
    let d = TempDir::new("prec");
    let one = d.write(
        "one.ini",
        "[DEFAULT]\nport = 1\nsecret = f1\na = f1\nb = f1\n",
    );
    let two = d.write("two.ini", "[DEFAULT]\nport = 2\nsecret = f2\na = f2\n");
    let dir = d.0.join("conf.d");
    d.write("conf.d/50.conf", "[DEFAULT]\nport = 3\nsecret = d50\n");
    d.write(
        "conf.d/10.conf",
        "[DEFAULT]\nport = 4\nsecret = d10\nb = d10\n",
    );
    let load = |env: &[(&str, &str)], flags: &[(&str, &str)]| {
        Loader::new(&SCHEMA)
            // The directory is named first: it still wins over every --config-file.
            .config_dir(&dir)
            .config_file(&one)
            .config_file(&two)
            .env(env.iter().copied())
            .flags(flags.iter().copied())
            .load()
            .expect("loads")
            .values
    };
    let v = load(&[], &[]);
    // workers: default; a: the later file; b: dir beats files; port: the last dir file.
    assert!(v.origin("DEFAULT", "workers").expect("o").is_default());
    assert_eq!(v.str("DEFAULT", "a").expect("a"), "f2");
    assert_eq!(v.str("DEFAULT", "b").expect("b"), "d10");
    assert_eq!(v.port("DEFAULT", "port").expect("port"), 3);
    assert_eq!(
        v.place("DEFAULT", "port").expect("place").to_string(),
        format!("{}:2: [DEFAULT] port", dir.join("50.conf").display())
    );
    let v = load(
        &[("OS_DEFAULT__PORT", "5"), ("OS_DEFAULT__SECRET", "env")],
        &[],
    );
    assert_eq!(v.port("DEFAULT", "port").expect("port"), 5);
    assert_eq!(
        v.origin("DEFAULT", "port").expect("o"),
        &Origin::Env {
            var: "OS_DEFAULT__PORT".into()
        }
    );
    let v = load(
        &[("OS_DEFAULT__PORT", "5"), ("OS_DEFAULT__SECRET", "env")],
        &[("port", "6")],
    );
    assert_eq!(v.port("DEFAULT", "port").expect("port"), 6);
    assert_eq!(v.str("DEFAULT", "secret").expect("s"), "env");
    assert_eq!(
        v.origin("DEFAULT", "port").expect("o"),
        &Origin::Flag {
            name: "--port".into()
        }
    );
}

#[test]
fn env_names_groups_upper_case() {
    let v = Loader::new(&SCHEMA)
        .env([
            ("OS_OVN__HOST", "h"),
            ("OS_ovn__host", "ignored"),
            ("OS_DEFAULT__DEBUG", "yes"),
        ])
        .load()
        .expect("loads")
        .values;
    assert_eq!(v.str("ovn", "host").expect("s"), "h");
    assert!(v.bool("DEFAULT", "debug").expect("b"));
    assert_eq!(v.str("ovn", "url").expect("s"), "tcp:h:6642");
}

#[test]
fn config_dir_reads_only_conf_files_in_sorted_order() {
    let d = TempDir::new("cdir");
    d.write("b.conf", "[DEFAULT]\na = b\n");
    d.write("a.conf", "[DEFAULT]\na = a\nb = a\n");
    d.write("c.conf.sample", "[DEFAULT]\na = sample\n");
    d.write("z.ini", "[DEFAULT]\na = ini\n");
    d.write(".z.conf", "[DEFAULT]\na = hidden\n");
    let v = Loader::new(&SCHEMA)
        .config_dir(&d.0)
        .load()
        .expect("loads")
        .values;
    assert_eq!(v.str("DEFAULT", "a").expect("a"), "b");
    assert_eq!(v.str("DEFAULT", "b").expect("b"), "a");
    let missing = err(Loader::new(&SCHEMA).config_dir(d.0.join("nope")).load());
    assert!(missing.starts_with("--config-dir "), "{missing}");
}

#[test]
fn oslo_substitution_rules() {
    let v = with_ini(
        "[DEFAULT]\nstate_path = /s\nsecret = pa$$word\na = ${state_path}/x\nb = $a+\
         ${ovn.host}\n[ovn]\nhost = 10.0.0.1\nurl = ssl:$host:${port}\n",
    )
    .expect("valid");
    assert_eq!(v.str("DEFAULT", "secret").expect("s"), "pa$word");
    assert_eq!(
        v.path("DEFAULT", "metadata_proxy_socket").expect("p"),
        Some(PathBuf::from("/s/metadata_proxy"))
    );
    assert_eq!(v.str("DEFAULT", "a").expect("a"), "/s/x");
    // Recursive: b uses a, which uses state_path; ${ovn.host} reaches another group.
    assert_eq!(v.str("DEFAULT", "b").expect("b"), "/s/x+10.0.0.1");
    // $host: same group first; ${port}: not in [ovn], so DEFAULT.
    assert_eq!(v.str("ovn", "url").expect("u"), "ssl:10.0.0.1:8775");
    // A flag value is substituted too.
    let v = Loader::new(&SCHEMA)
        .flag("--a", "$$HOME and $port")
        .load()
        .expect("valid")
        .values;
    assert_eq!(v.str("DEFAULT", "a").expect("a"), "$HOME and 8775");
}

#[test]
fn deprecated_names_are_found_by_references() {
    let v = with_ini("[DEFAULT]\nnova_metadata_ip = 10.1.1.1\na = http://$nova_metadata_ip/\n")
        .expect("valid");
    assert_eq!(v.str("DEFAULT", "a").expect("a"), "http://10.1.1.1/");
}

#[test]
fn undefined_reference_names_the_referencing_line() {
    let e = with_ini("[DEFAULT]\n\na = $nope/x\n").expect_err("undefined");
    assert_eq!(
        e.to_string(),
        "/etc/t.ini:3: [DEFAULT] a: undefined reference ${nope}: no option nope in [DEFAULT] \
         (write $$ for a literal $)"
    );
    // A key present in the files but not in the schema does not resolve (oslo: only
    // registered options do).
    let e = with_ini("[DEFAULT]\nextra = 1\na = ${extra}\n").expect_err("unregistered");
    assert!(e
        .to_string()
        .starts_with("/etc/t.ini:3: [DEFAULT] a: undefined reference ${extra}"));
    let e = with_ini("[ovn]\nurl = ${nogroup.host}\n").expect_err("bad group");
    assert!(e
        .to_string()
        .starts_with("/etc/t.ini:2: [ovn] url: undefined reference ${nogroup.host}"));
    // The error is about the value that references, even when it is a default.
    let e = Loader::new(&SCHEMA).flag("state-path", "$missing").load();
    assert!(err(e).starts_with("--state-path: undefined reference ${missing}"));
}

#[test]
fn reference_cycles_are_errors() {
    let e = with_ini("[DEFAULT]\na = $b\nb = ${a}\n").expect_err("cycle");
    assert_eq!(
        e.to_string(),
        "/etc/t.ini:2: [DEFAULT] a: reference cycle: a -> b -> a"
    );
}

#[test]
fn bad_values_are_one_line_per_origin() {
    let file = err(Loader::new(&SCHEMA)
        .ini(ini("[DEFAULT]\n\nport = 0\n"))
        .load());
    assert_eq!(
        file,
        "/etc/t.ini:3: [DEFAULT] port: 0 is out of range 1..=65535"
    );
    let env = err(Loader::new(&SCHEMA)
        .env([("OS_DEFAULT__DEBUG", "maybe")])
        .load());
    assert_eq!(
        env,
        "OS_DEFAULT__DEBUG: invalid boolean \"maybe\": expected true/false, yes/no, on/off or 1/0"
    );
    let flag = err(Loader::new(&SCHEMA).flag("--ovn_timeout", "61").load());
    assert_eq!(flag, "--ovn-timeout: 61 is out of range 0..=60 seconds");
    // A default that becomes bad through what it references blames the default.
    static BAD: &[Opt] = &[
        Opt::new("DEFAULT", "p", Kind::Port, "").default("$q"),
        Opt::new("DEFAULT", "q", Kind::Str, "").default("0"),
    ];
    let default = err(Loader::new(&Schema::new(BAD)).load());
    assert_eq!(
        default,
        "p (default): 0 is out of range 1..=65535 (from \"$q\")"
    );
    // The referenced option is blamed, even when declared after the one referencing it.
    static ORDER: &[Opt] = &[
        Opt::new("DEFAULT", "sock", Kind::Path, "").default("$base/s"),
        Opt::new("DEFAULT", "base", Kind::Path, ""),
    ];
    let order = err(Loader::new(&Schema::new(ORDER)).flag("base", "rel").load());
    assert_eq!(order, "--base: \"rel\" must be an absolute path");
    let rel = err(Loader::new(&SCHEMA)
        .ini(ini(
            "[DEFAULT]\nstate_path = rel\nmetadata_proxy_socket = $state_path/s\n",
        ))
        .load());
    assert_eq!(
        rel,
        "/etc/t.ini:2: [DEFAULT] state_path: \"rel\" must be an absolute path"
    );
    let unknown = err(Loader::new(&SCHEMA).flag("--bogus", "1").load());
    assert_eq!(unknown, "--bogus: unknown option");
}

#[test]
fn kind_errors_from_files() {
    for (line, want) in [
        ("debug = perhaps", "debug: invalid boolean \"perhaps\""),
        ("workers = many", "workers: invalid integer \"many\""),
        ("workers = 65", "workers: 65 is out of range 0..=64"),
        (
            "state_path = var/lib",
            "state_path: \"var/lib\" must be an absolute path",
        ),
        (
            "protocol = ftp",
            "protocol: invalid value \"ftp\": expected one of http, https",
        ),
    ] {
        let e = with_ini(&format!("[DEFAULT]\n{line}\n"))
            .expect_err(line)
            .to_string();
        assert!(e.starts_with("/etc/t.ini:2: [DEFAULT] "), "{e}");
        assert!(e.contains(want), "{e} should contain {want}");
    }
    let e = with_ini("[ovn]\ntimeout = soon\n")
        .expect_err("secs")
        .to_string();
    assert_eq!(
        e,
        "/etc/t.ini:2: [ovn] timeout: invalid number of seconds \"soon\""
    );
    // An empty path is "unset", not an error.
    let v = with_ini("[DEFAULT]\nstate_path =\nmetadata_proxy_socket = /m\n").expect("valid");
    assert_eq!(v.path("DEFAULT", "state_path").expect("p"), None);
}

#[test]
fn deprecated_name_is_read_with_a_warning() {
    let l = Loader::new(&SCHEMA)
        .ini(ini("[DEFAULT]\nnova_metadata_ip = 10.1.1.1\n"))
        .load()
        .expect("valid");
    assert_eq!(
        l.values.str("DEFAULT", "nova_metadata_host").expect("s"),
        "10.1.1.1"
    );
    assert_eq!(
        l.values
            .place("DEFAULT", "nova_metadata_host")
            .expect("p")
            .to_string(),
        "/etc/t.ini:2: [DEFAULT] nova_metadata_ip"
    );
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        vec!["/etc/t.ini:2: [DEFAULT] nova_metadata_ip: deprecated name, use [DEFAULT] nova_metadata_host"]
    );
    let v = with_ini("[DEFAULT]\nnova_metadata_host = new\nnova_metadata_ip = old\n").expect("ok");
    assert_eq!(v.str("DEFAULT", "nova_metadata_host").expect("s"), "new");
}

#[test]
fn lists_from_files_and_repeated_flags() {
    let v = with_ini("[DEFAULT]\nbind = a, b\n").expect("valid");
    assert_eq!(v.list("DEFAULT", "bind").expect("l"), vec!["a", "b"]);
    let v = Loader::new(&SCHEMA)
        .ini(ini("[DEFAULT]\nbind = a, b\n"))
        .flags([("bind", "x"), ("--bind", "y,z")])
        .load()
        .expect("valid")
        .values;
    assert_eq!(v.list("DEFAULT", "bind").expect("l"), vec!["x", "y", "z"]);
}

#[test]
fn from_clap_matches() {
    let cmd = SCHEMA.augment(clap::Command::new("t"));
    let m = cmd
        .try_get_matches_from(["t", "--debug", "--ovn-host", "h", "--nodebug", "--port=9"])
        .expect("parses");
    let v = Loader::new(&SCHEMA)
        .matches(&m)
        .load()
        .expect("valid")
        .values;
    assert!(!v.bool("DEFAULT", "debug").expect("b"));
    assert_eq!(v.str("ovn", "url").expect("u"), "tcp:h:6642");
    assert_eq!(v.port("DEFAULT", "port").expect("p"), 9);
    assert_eq!(
        v.error("DEFAULT", "debug", "conflicts").to_string(),
        "--nodebug: conflicts"
    );
}

#[test]
fn reading_outside_the_schema_is_an_error_not_a_panic() {
    let v = Loader::new(&SCHEMA).load().expect("defaults").values;
    let e = v.bool("DEFAULT", "nope").expect_err("not declared");
    assert_eq!(
        e.to_string(),
        "[DEFAULT] nope: not an option of this program (schema bug)"
    );
    let e = v.bool("DEFAULT", "port").expect_err("wrong getter");
    assert!(
        e.to_string().contains("is a port, read as a boolean"),
        "{e}"
    );
    assert!(
        v.int::<u8>("DEFAULT", "port").is_err(),
        "8775 does not fit u8"
    );
    assert_eq!(
        v.int::<u32>("DEFAULT", "port").expect("port is an integer"),
        8775
    );
    assert_eq!(
        v.error("ovn", "timeout", "too short").to_string(),
        "[ovn] timeout (default): too short"
    );
    assert!(matches!(
        v.error("x", "y", "z"),
        ConfigError::NotInSchema { .. }
    ));
}

#[test]
fn choice_as_and_parse() {
    let v = with_ini("[DEFAULT]\nprotocol = HTTPS\na = 42\nb = x\n").expect("valid");
    let https = v
        .choice_as("DEFAULT", "protocol", &[("http", false), ("https", true)])
        .expect("mapped");
    assert!(https);
    assert_eq!(v.parse::<u8>("DEFAULT", "a").expect("parses"), Some(42));
    assert_eq!(v.parse::<u8>("DEFAULT", "secret").expect("unset"), None);
    let e = v.parse::<u8>("DEFAULT", "b").expect_err("bad");
    assert!(
        e.to_string()
            .starts_with("/etc/t.ini:4: [DEFAULT] b: invalid value \"x\""),
        "{e}"
    );
}

/// The README's example, kept compiling and true.
mod readme {
    use crate::{Kind, Loaded, Opt, Schema, DEFAULT_GROUP as D};
    use clap::{CommandFactory, FromArgMatches, Parser};

    static OPTS: &[Opt] = &[
        Opt::new(D, "state_path", Kind::Path, "Base of $state_path").default("/var/lib/neutron"),
        Opt::new(D, "metadata_proxy_socket", Kind::Path, "Agent socket")
            .default("$state_path/metadata_proxy"),
        Opt::new(D, "nova_metadata_host", Kind::Str, "Nova host")
            .deprecated(&[(D, "nova_metadata_ip")]),
        Opt::new(D, "nova_metadata_port", Kind::Port, "Nova port").default("8775"),
        Opt::new(D, "debug", Kind::Bool, "Log at debug level")
            .default("false")
            .short('d'),
        Opt::new(
            "metadata_haproxy",
            "timeout_server",
            Kind::Seconds {
                min: 1.0,
                max: 86_400.0,
            },
            "Agent inactivity before 504",
        )
        .long("timeout-server")
        .default("32"),
    ];
    static SCHEMA: Schema = Schema::new(OPTS)
        .ignored(&[(D, &["auth_url", "nova_client_cert"])])
        .foreign_sections(&["ovs", "agent"]);

    /// The program's own flags, next to the generated ones.
    #[derive(Debug, Parser)]
    #[command(name = "prog")]
    struct Cli {
        #[arg(long = "router-id", alias = "router_id")]
        router_id: Option<String>,
    }

    #[test]
    fn readme_example_works() {
        assert!(SCHEMA.check().is_ok());
        let cmd = SCHEMA.augment(Cli::command());
        cmd.clone().debug_assert();
        let m = cmd
            .try_get_matches_from([
                "prog",
                "--router_id",
                "r1",
                "-d",
                "--nova_metadata_port=9000",
                "--timeout-server",
                "7.5",
            ])
            .expect("parses");
        let cli = Cli::from_arg_matches(&m).expect("own flags");
        assert_eq!(cli.router_id.as_deref(), Some("r1"));
        let Loaded {
            values: v,
            warnings,
        } = crate::Loader::new(&SCHEMA)
            .matches(&m)
            .env([("OS_DEFAULT__STATE_PATH", "/srv/n")])
            .load()
            .expect("valid");
        assert!(warnings.is_empty());
        assert!(v.bool(D, "debug").expect("b"));
        assert_eq!(v.port(D, "nova_metadata_port").expect("p"), 9000);
        assert_eq!(
            v.seconds("metadata_haproxy", "timeout_server").expect("s"),
            std::time::Duration::from_millis(7500)
        );
        assert_eq!(
            v.path(D, "metadata_proxy_socket").expect("p"),
            Some("/srv/n/metadata_proxy".into())
        );
        // A cross-field check blames the flag that set the port.
        let e = (v.opt_str(D, "nova_metadata_host").expect("s").is_none()
            && v.is_set(D, "nova_metadata_port").expect("set"))
        .then(|| v.error(D, "nova_metadata_port", "needs nova_metadata_host"));
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("--nova-metadata-port: needs nova_metadata_host")
        );
    }
}

#[test]
fn shared_groups_load_flag_substitute_and_lint_like_own_options() {
    static OWN: &[Opt] = &[Opt::new("DEFAULT", "base", Kind::Str, "Base").default("/b")];
    static PART: &[Opt] = &[
        Opt::new(
            "metadata_haproxy",
            "timeout_server",
            Kind::Int { min: 1, max: 9 },
            "T",
        )
        .long("timeout-server")
        .default("3"),
        Opt::new("DEFAULT", "sock", Kind::Str, "S").default("$base/s"),
    ];
    static S: Schema = Schema::new(OWN).shared(&[PART]);
    S.check().expect("table");
    let l = Loader::new(&S)
        .ini(ini("[metadata_haproxy]\ntimeout_servr = 4\n"))
        .flags([("--timeout-server", "5")])
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("loads");
    assert_eq!(
        l.values
            .int::<u8>("metadata_haproxy", "timeout_server")
            .expect("int"),
        5
    );
    assert_eq!(l.values.str("DEFAULT", "sock").expect("str"), "/b/s");
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(w.iter().any(|w| w.contains("timeout_server")), "{w:?}");
    assert!(S
        .args()
        .iter()
        .any(|a| a.get_long() == Some("timeout-server")));
}

/// Mutated files (seeded; `NS_FUZZ_SEED` replays: truncations, NUL, CR, stray brackets,
/// continuation lines, `$` references, huge numbers): the loader gives values every getter
/// reads without a panic, or one line that names the file and line (`file:line: ...`) or the
/// default the file's value reached through a reference.
#[test]
fn mutated_files_load_or_name_file_line_and_reason() {
    use ns_testkit::fuzz;
    const TEXT: &str = "[DEFAULT]\nstate_path = /var/lib/neutron\nmetadata_proxy_socket = $state_path/m\n\
        debug = true\nport = 8775\nworkers = 4\nsecret = pa$$word\nnova_metadata_ip = 10.0.0.1\n\
        protocol = https\nbind = a, b,\n  c\n\n[ovn]\nhost = h\nurl = tcp:${host}:6642\ntimeout = 2.5\n";
    const DICT: &[&[u8]] = &[
        b"$",
        b"${",
        b"${ovn.",
        b"$$",
        b"$nope",
        b"$a\na = $b\nb = $a\n",
        b"[",
        b"]",
        b"[ovn]\n",
        b"\n  continued",
        b"99999999999999999999",
        b"1e309",
        b"-0.0",
        b"\xef\xbb\xbf",
    ];
    let check = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let got = Ini::parse_str(&text, Path::new("/etc/t.ini"))
            .map_err(ConfigError::from)
            .and_then(|i| Loader::new(&SCHEMA).ini(i).load());
        match got {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "not one line: {msg:?}");
                assert!(
                    msg.starts_with("/etc/t.ini:") || msg.contains(" (default): "),
                    "{msg}"
                );
            }
            Ok(l) => {
                let v = l.values;
                let _ = v.path("DEFAULT", "metadata_proxy_socket");
                let _ = v.bool("DEFAULT", "debug");
                let _ = v.port("DEFAULT", "port");
                let _ = v.int::<u8>("DEFAULT", "workers");
                let _ = v.str("DEFAULT", "secret");
                let _ = v.list("DEFAULT", "bind");
                let _ = v.choice("DEFAULT", "protocol");
                let _ = v.seconds("ovn", "timeout");
                let _ = v.str("ovn", "url");
                for w in &l.warnings {
                    assert!(!w.to_string().contains('\n'), "{w}");
                }
            }
        }
    };
    for m in fuzz::truncations_and_substitutions(TEXT.as_bytes(), b"\0\r\n[$=") {
        check(&m);
    }
    fuzz::run("ini", 0x5eed_000e, 1500, |rng, _| {
        check(&fuzz::mutate(rng, TEXT.as_bytes(), DICT));
    });
}
