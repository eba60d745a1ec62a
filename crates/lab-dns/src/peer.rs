//! A real `dnsmasq` on loopback, for tests (as the lab's "outside" upstream) and the benchmark
//! (serving the same records as the lab DNS). It reads no config file, no `/etc/hosts` and no
//! resolv.conf, so it answers only what it is given and never asks anyone else.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running dnsmasq; dropping it kills it.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1 (a free port) with `args` added (e.g.
    /// `--address=/outside.test/192.0.2.7`, `--host-record=…`, `--srv-host=…`).
    pub fn start(args: &[String]) -> std::io::Result<Dnsmasq> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
            ])
            .arg(format!("--port={port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("dnsmasq (dnsmasq-base): {e}")))?;
        Ok(Dnsmasq {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
