#![forbid(unsafe_code)]
fn main() {
    eprintln!("usage: ns-metadata-agent --help (not built yet)");
    std::process::exit(2);
}
