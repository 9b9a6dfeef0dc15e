//! Placeholder until the benchmark issue builds the agent stand-in.
#![forbid(unsafe_code)]
fn main() {
    eprintln!("ns-bench-agent: not built yet");
    std::process::exit(2);
}
