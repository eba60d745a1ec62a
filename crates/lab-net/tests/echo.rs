//! The echo protocol as other crates' tests rely on it, exercised inside a lab pod.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use lab_net::{Lab, client};

fn exchange(lab_pod: &lab_net::Pod, addr: SocketAddr, send: &'static [u8]) -> String {
    lab_pod
        .netns()
        .run(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(send).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}

#[test]
fn line_http_keep_alive_and_head() {
    let mut lab = Lab::new("echo_protocol").unwrap();
    let pod = lab.add_pod("echo").unwrap();
    let server = pod.serve_echo("echo-a", &[0], &[0]).unwrap();
    let port = server.tcp_addrs()[0].port();
    let addr: SocketAddr = (pod.ipv4, port).into();

    // Line protocol, with and without a trailing newline.
    assert_eq!(exchange(&pod, addr, b"hi\n"), "echo-a\n");
    assert_eq!(exchange(&pod, addr, b"no newline"), "echo-a\n");
    assert_eq!(exchange(&pod, addr, b""), "echo-a\n");

    // Two keep-alive requests on one connection, the second with a body, then HEAD + close.
    let raw = exchange(
        &pod,
        addr,
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
          HEAD /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 3, "{raw}");
    assert_eq!(raw.matches("x-echo-name: echo-a").count(), 3, "{raw}");
    assert!(
        raw.ends_with("connection: close\r\n\r\n"),
        "HEAD has no body: {raw}"
    );
    let first = client::parse_response(raw.as_bytes()).unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "echo-a\n"));

    // UDP on the bound port, from another pod over IPv6.
    let other = lab.add_pod("other").unwrap();
    let udp: SocketAddr = (pod.ipv6, server.udp_addrs()[0].port()).into();
    assert_eq!(other.udp_request(udp).unwrap(), "echo-a");
    assert_eq!(
        other.http_get((pod.ipv6, port).into(), "/").unwrap(),
        "echo-a\n"
    );
}

#[test]
fn stops_on_drop_and_reports_bind_errors() {
    let mut lab = Lab::new("echo_stop").unwrap();
    let pod = lab.add_pod("echo").unwrap();
    let server = pod.serve_echo("first", &[9000], &[]).unwrap();
    let err = pod.serve_echo("second", &[9000], &[]).unwrap_err();
    assert!(err.to_string().contains("bind tcp [::]:9000"), "{err}");
    drop(server);
    let again = pod.serve_echo("second", &[9000], &[]).unwrap();
    assert_eq!(pod.tcp_request((pod.ipv4, 9000).into()).unwrap(), "second");
    drop(again);
    assert!(pod.tcp_request((pod.ipv4, 9000).into()).is_err());
}
