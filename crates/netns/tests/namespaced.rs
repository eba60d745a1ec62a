//! Real-kernel tests: each test makes its own uniquely named namespace and deletes it on drop.

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use netns::{Error, Netns};

/// Deletes the namespace on drop, even when the test panics.
struct Scratch(Netns);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let name = format!("gwnt{}-{test}", std::process::id());
        Scratch(Netns::create(&name).expect("create namespace"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Netns::delete(self.0.name());
    }
}

fn links() -> String {
    std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev")
}

#[test]
fn run_enters_the_namespace() {
    let ns = Scratch::new("enter");
    let inside = ns.0.run(links).unwrap();
    let own = |s: &str| s.lines().skip(2).count();
    assert_eq!(own(&inside), 1, "a new namespace has only lo: {inside}");
    assert_eq!(ns.0.name(), format!("gwnt{}-enter", std::process::id()));
    assert!(Netns::list().unwrap().iter().any(|n| n == ns.0.name()));
}

#[test]
fn children_and_sockets_stay_inside() {
    let ns = Scratch::new("child");
    let status =
        ns.0.run(|| {
            Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
        })
        .unwrap()
        .unwrap();
    assert!(status.success());
    // A listener made inside is reachable only from inside.
    let listener =
        ns.0.run(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
    let addr = listener.local_addr().unwrap();
    let inside = ns.0.run(move || TcpStream::connect(addr).is_ok()).unwrap();
    assert!(inside);
    // The child's change is visible inside only.
    assert!(ns.0.run(links).unwrap().contains("lo:"));
    drop(listener);
}

#[test]
fn delete_then_open_fails_with_name() {
    let name = format!("gwnt{}-del", std::process::id());
    let ns = Netns::create(&name).unwrap();
    drop(ns);
    Netns::delete(&name).unwrap();
    assert!(!Netns::exists(&name));
    let err = Netns::open(&name).unwrap_err();
    assert!(matches!(err, Error::Open { .. }));
    let err = Netns::delete(&name).unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}
