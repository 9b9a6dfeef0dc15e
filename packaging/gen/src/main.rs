//! `ns-metadata-gen OUT_DIR`: writes `OUT_DIR/man/*.8` and the shell completions under
//! `OUT_DIR/completions/usr/share/...` (the paths they are installed at). See the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: ns-metadata-gen OUT_DIR");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let run = || -> anyhow::Result<usize> {
        let man = ns_metadata_gen::man_pages(&out.join("man"))?;
        let comp = ns_metadata_gen::completions(&out.join("completions"))?;
        Ok(man.len() + comp.len())
    };
    match run() {
        Ok(n) => eprintln!("ns-metadata-gen: {n} files under {}", out.display()),
        Err(e) => {
            eprintln!("ns-metadata-gen: {e:#}");
            std::process::exit(1);
        }
    }
}
