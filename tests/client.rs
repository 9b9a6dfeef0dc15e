//! Clients inside `vm` namespaces: curl (one process per request, as a VM's boot scripts do),
//! a bounded request loop that records what the VM saw over time, and cloud-init's own readers.
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one curl got: `status` 0 means no HTTP answer at all (then `error` says why).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub error: String,
}

/// `http://169.254.169.254` + path.
pub fn url(path: &str) -> String {
    format!("http://169.254.169.254{path}")
}

/// `ip netns exec NS curl ... URL` with a per-request timeout in seconds.
pub fn curl_with(ns: &str, target: &str, extra: &[&str], timeout_s: u32) -> Reply {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time"])
        .arg(timeout_s.to_string())
        .args(extra)
        .args(["-w", "\n%{http_code}", target])
        .stdin(Stdio::null())
        .output()
        .expect("run curl in the vm namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        error: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// GET `http://169.254.169.254<path>` from inside `ns`.
pub fn get(ns: &str, path: &str) -> Reply {
    curl_with(ns, &url(path), &[], 5)
}

/// GET until the answer is 200 or `timeout` passes; returns the last reply.
pub fn get_until_ok(ns: &str, path: &str, timeout: Duration) -> Reply {
    let start = Instant::now();
    loop {
        let r = curl_with(ns, &url(path), &[], 2);
        if r.status == 200 || start.elapsed() > timeout {
            return r;
        }
    }
}

/// One request of a loop: when it started (since the loop began) and its outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub status: u16,
}

/// Requests from `ns` one after another in a background thread, until stopped or `max` done.
pub struct RequestLoop {
    start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl RequestLoop {
    pub fn start(ns: &str, path: &str, max: usize) -> RequestLoop {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (ns, target) = (ns.to_owned(), url(path));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                for _ in 0..max {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = start.elapsed();
                    let r = curl_with(&ns, &target, &[], 3);
                    samples.lock().expect("samples lock").push(Sample {
                        at,
                        status: r.status,
                    });
                }
            })
        };
        RequestLoop {
            start,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Time since the loop started (to mark events in the timeline).
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// Wait until a sample started after `after` satisfies `pred`, or `timeout`.
    pub fn wait_for(&self, after: Duration, timeout: Duration, pred: impl Fn(u16) -> bool) -> bool {
        crate::wait_until(timeout, || {
            self.samples()
                .iter()
                .any(|s| s.at >= after && pred(s.status))
        })
    }

    /// Wait for `n` more samples started after `after` (or `timeout`).
    pub fn wait_count(&self, after: Duration, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || {
            self.samples().iter().filter(|s| s.at >= after).count() >= n
        })
    }

    /// Stop and return every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A timeline a human can read: runs of equal statuses with when they started, e.g.
/// `200x41 (0.00-1.52s) | 000x3 (1.53-1.60s)`; 000 means no HTTP answer (refused, reset, timeout).
pub fn timeline(samples: &[Sample]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let mut j = i;
        while j + 1 < samples.len() && samples[j + 1].status == samples[i].status {
            j += 1;
        }
        parts.push(format!(
            "{:03}x{} ({:.2}-{:.2}s)",
            samples[i].status,
            j - i + 1,
            samples[i].at.as_secs_f64(),
            samples[j].at.as_secs_f64()
        ));
        i = j + 1;
    }
    parts.join(" | ")
}

/// The system Python that has Debian's cloud-init (a pyenv shim may shadow `python3`).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Whether cloud-init's Python modules are importable.
pub fn cloud_init_available() -> bool {
    Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            "import cloudinit.sources.helpers.openstack, cloudinit.sources.helpers.ec2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// cloud-init's readers, run inside `ns` exactly as its datasources call them: the OpenStack
/// `MetadataReader.read_v2()` (which also walks the EC2 tree) and the EC2 helpers for user
/// data and the meta-data tree. Prints one JSON object.
const CLOUD_INIT_READ: &str = r#"
import json
from cloudinit.sources.helpers import ec2, openstack

def text(b):
    return b.decode() if isinstance(b, bytes) else b

r = openstack.MetadataReader("http://169.254.169.254", timeout=5, retries=2)
res = r.read_v2()
md = res["metadata"]
ec2_md = ec2.get_instance_metadata(metadata_address="http://169.254.169.254", timeout=5, retries=2)
ec2_ud = ec2.get_instance_userdata(metadata_address="http://169.254.169.254", timeout=5, retries=2)
print(json.dumps({
    "uuid": md.get("uuid"),
    "hostname": md.get("hostname"),
    "public_keys": md.get("public_keys"),
    "userdata": text(res.get("userdata")),
    "networkdata": res.get("networkdata"),
    "ec2_in_v2": res.get("ec2-metadata", {}).get("instance-id"),
    "ec2_instance_id": ec2_md.get("instance-id"),
    "ec2_public_keys": ec2_md.get("public-keys"),
    "ec2_userdata": text(ec2_ud),
}))
"#;

/// Run [`CLOUD_INIT_READ`] inside `ns`; panics with its stderr if it fails.
pub fn cloud_init_read(ns: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, SYSTEM_PYTHON, "-c", CLOUD_INIT_READ])
        .stdin(Stdio::null())
        .output()
        .expect("run cloud-init's reader");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cloud-init reader failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("cloud-init output {last:?}: {e}"))
}
