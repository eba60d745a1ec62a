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
    /// `--address=/outside.test/192.0.2.7`, `--host-record=…`, `--srv-host=…`), and returns once
    /// it listens. The free port is only free when it is picked: a parallel test can take it (the
    /// UDP or the TCP side) before dnsmasq binds, so a dnsmasq that exits is started again on
    /// another port.
    pub fn start(args: &[String]) -> std::io::Result<Dnsmasq> {
        let mut last = None;
        for _ in 0..5 {
            match Self::start_once(args)? {
                Ok(d) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("dnsmasq did not start")))
    }

    /// Outer error: dnsmasq cannot be run at all. Inner error: this attempt's port was lost.
    fn start_once(args: &[String]) -> std::io::Result<std::io::Result<Dnsmasq>> {
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
        let mut d = Dnsmasq {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // dnsmasq binds UDP and TCP before it serves; its TCP listener accepting is the sign.
        for _ in 0..200 {
            if let Some(status) = d.child.try_wait()? {
                return Ok(Err(std::io::Error::other(format!(
                    "dnsmasq on port {port} exited ({status})"
                ))));
            }
            if std::net::TcpStream::connect(d.addr).is_ok() {
                return Ok(Ok(d));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Err(std::io::Error::other(format!(
            "dnsmasq on port {port} did not listen"
        ))))
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
