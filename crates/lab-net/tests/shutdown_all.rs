//! `shutdown_all` removes every lab of the process, so it gets a test binary of its own.

use lab_net::{Lab, Netns};

#[test]
fn shutdown_all_removes_every_live_lab() {
    let mut one = Lab::new("all_one").unwrap();
    let two = Lab::new("all_two").unwrap();
    one.add_pod("a").unwrap();
    lab_net::shutdown_all().unwrap();
    let names = Netns::list().unwrap();
    for lab in [&one, &two] {
        let prefix = format!("{}-", lab.prefix());
        assert!(!names.iter().any(|n| n.starts_with(&prefix)), "{names:?}");
    }
    assert!(matches!(one.add_pod("b"), Err(lab_net::Error::ShutDown(_))));
}
