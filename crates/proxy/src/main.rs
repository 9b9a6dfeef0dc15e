#![forbid(unsafe_code)]
fn main() {
    eprintln!("usage: ns-metadata-proxy --help (not built yet)");
    std::process::exit(2);
}
