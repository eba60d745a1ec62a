//! A packet capture inside a lab namespace: `tcpdump -A` on one interface, its output (payloads
//! printed as text) collected as it comes, so a test or demo can ask whether a marker crossed
//! the wire. Stopped on drop.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Capture {
    child: Child,
    text: Arc<Mutex<String>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = from.read(&mut b) {
            if n == 0 {
                return;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&b[..n]));
        }
    });
}

impl Capture {
    /// Starts `tcpdump` (the command, e.g. a Pod's `command("tcpdump")`) on `iface` with
    /// `filter`; returns once tcpdump says it is listening.
    pub fn start(mut tcpdump: Command, iface: &str, filter: &str) -> std::io::Result<Capture> {
        let mut child = tcpdump
            .args(["-i", iface, "-nn", "-l", "-U", "-A", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut err = child.stderr.take().expect("piped");
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let n = err.read(&mut b)?;
            if n == 0 {
                let _ = child.wait();
                return Err(std::io::Error::other(format!(
                    "tcpdump did not start: {}",
                    String::from_utf8_lossy(&seen)
                )));
            }
            seen.extend_from_slice(&b[..n]);
        }
        let text = Arc::new(Mutex::new(String::new()));
        collect(err, text.clone());
        collect(child.stdout.take().expect("piped"), text.clone());
        Ok(Capture { child, text })
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contains(&self, s: &str) -> bool {
        self.text().contains(s)
    }

    /// Waits up to `within` for `s` to be captured; whether it was.
    pub fn wait_for(&self, s: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.contains(s) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
