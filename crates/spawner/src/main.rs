#![forbid(unsafe_code)]
fn main() {
    eprintln!("usage: ns-metadata-spawner --help (not built yet)");
    std::process::exit(2);
}
