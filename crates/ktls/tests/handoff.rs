//! The hand-off without a kernel TLS module: the fallback on a real socket, and the key
//! material checked by decrypting rustls' own records in userspace exactly as the kernel would
//! with the crypto-info we would give it, through a session ticket and a key update.

use std::io::{Read, Write};
use std::sync::Arc;

use ktls::{Action, IntoKernel, Metrics, Offload, Session, TlsCryptoInfo, crypto_info};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::unbuffered::ConnectionState;
use rustls::{ProtocolVersion, ServerConnection};

fn configs(
    suite: rustls::SupportedCipherSuite,
) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["peer.test".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    server.enable_secret_extraction = true;
    (Arc::new(client), Arc::new(server))
}

fn flush(from: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut out).unwrap();
    }
    out
}

fn feed(to: &mut ServerConnection, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        to.read_tls(&mut bytes).unwrap();
    }
    to.process_new_packets().unwrap();
}

/// Drives an unbuffered client through the handshake against a buffered server, and sends
/// `first` as the client's first data. Returns the client's last flight (Finished + data);
/// the server has not seen it yet, and nothing the server sends after it reached the client.
fn handshake(
    c: &mut UnbufferedClientConnection,
    s: &mut ServerConnection,
    first: &[u8],
) -> Vec<u8> {
    let mut incoming = Vec::new();
    let mut outgoing = Vec::new();
    loop {
        let status = c.process_tls_records(&mut incoming);
        let discard = status.discard;
        match status.state.unwrap() {
            ConnectionState::EncodeTlsData(mut e) => {
                let mut buf = vec![0u8; 32 * 1024];
                let n = e.encode(&mut buf).unwrap();
                outgoing.extend_from_slice(&buf[..n]);
            }
            ConnectionState::TransmitTlsData(mut t) => {
                // Once the handshake is over on the client's side its Finished is in
                // `outgoing`, and the data follows it.
                let mut buf = vec![0u8; 1024];
                let sealed = t
                    .may_encrypt_app_data()
                    .map(|mut w| w.encrypt(first, &mut buf).unwrap());
                t.done();
                if let Some(n) = sealed {
                    outgoing.extend_from_slice(&buf[..n]);
                    return outgoing;
                }
                feed(s, &std::mem::take(&mut outgoing));
            }
            ConnectionState::BlockedHandshake => incoming.extend(flush(s)),
            ConnectionState::WriteTraffic(mut w) => {
                let mut buf = vec![0u8; 1024];
                let n = w.encrypt(first, &mut buf).unwrap();
                outgoing.extend_from_slice(&buf[..n]);
                return outgoing;
            }
            other => panic!("unexpected state in the handshake: {other:?}"),
        }
        incoming.drain(..discard);
    }
}

/// TLS records: (content type, header + ciphertext).
fn records(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while wire.len() >= 5 {
        let len = u16::from_be_bytes([wire[3], wire[4]]) as usize;
        out.push((wire[0], wire[..5 + len].to_vec()));
        wire = &wire[5 + len..];
    }
    out
}

/// The AEAD key of a crypto-info and the nonce of the record `n` records after the one its
/// sequence number names (-1: the one before), as the kernel derives them (TLS 1.3: the
/// salt and IV make the static nonce, XORed with the record's sequence number).
fn record_key(info: &TlsCryptoInfo, n: i64) -> (ring::aead::LessSafeKey, ring::aead::Nonce) {
    let (alg, key, salt, iv, rec_seq): (_, &[u8], &[u8], &[u8], _) = match info {
        TlsCryptoInfo::Aes128Gcm(i) => {
            (&ring::aead::AES_128_GCM, &i.key, &i.salt, &i.iv, i.rec_seq)
        }
        TlsCryptoInfo::Aes256Gcm(i) => {
            (&ring::aead::AES_256_GCM, &i.key, &i.salt, &i.iv, i.rec_seq)
        }
        TlsCryptoInfo::Chacha20Poly1305(i) => (
            &ring::aead::CHACHA20_POLY1305,
            &i.key,
            &i.salt,
            &i.iv,
            i.rec_seq,
        ),
    };
    let seq = u64::from_be_bytes(rec_seq).checked_add_signed(n).unwrap();
    let mut nonce = [0u8; 12];
    nonce[..salt.len()].copy_from_slice(salt);
    nonce[salt.len()..].copy_from_slice(iv);
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    (
        ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key).unwrap()),
        ring::aead::Nonce::assume_unique_for_key(nonce),
    )
}

/// What the kernel does with a TLS 1.3 record and the crypto-info: (inner type, plaintext).
/// `n` counts records from the one the crypto-info's sequence number names (-1: the one before).
fn open(info: &TlsCryptoInfo, n: i64, record: &[u8]) -> (u8, Vec<u8>) {
    let (key, nonce) = record_key(info, n);
    let mut buf = record[5..].to_vec();
    let plain = key
        .open_in_place(nonce, ring::aead::Aad::from(&record[..5]), &mut buf)
        .expect("the crypto-info decrypts rustls' record");
    let end = plain.iter().rposition(|b| *b != 0).unwrap();
    (plain[end], plain[..end].to_vec())
}

#[test]
fn key_material_tickets_and_key_updates_decrypt_as_the_kernel_would() {
    let mut suites = 0;
    for suite in rustls::crypto::ring::default_provider().cipher_suites {
        if suite.version() != &rustls::version::TLS13 {
            continue;
        }
        suites += 1;
        let (cc, sc) = configs(suite);
        let mut c = UnbufferedClientConnection::new(cc, ServerName::try_from("peer.test").unwrap())
            .unwrap();
        let mut s = ServerConnection::new(sc).unwrap();
        let client_flight = handshake(&mut c, &mut s, b"ping");

        // The client gives its session up now, before it reads the server's tickets.
        let (secrets, kernel) = c.into_kernel().unwrap();
        let tx = crypto_info(ProtocolVersion::TLSv1_3, secrets.tx.0, &secrets.tx.1).unwrap();
        let mut rx = crypto_info(ProtocolVersion::TLSv1_3, secrets.rx.0, &secrets.rx.1).unwrap();
        let mut rx_n = 0;
        let mut session = Session::new(kernel, ProtocolVersion::TLSv1_3);

        // Transmit keys: the data record the client sent last was sealed with them.
        let (ty, data) = records(&client_flight).pop().unwrap();
        assert_eq!(ty, 23);
        assert_eq!(open(&tx, -1, &data), (23, b"ping".to_vec()), "{suite:?}");

        feed(&mut s, &client_flight);
        let mut got = [0u8; 4];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        // Receive keys: the server's tickets arrive after the hand-off.
        let mut tickets = 0;
        for (_, rec) in records(&flush(&mut s)) {
            let (ty, body) = open(&rx, rx_n, &rec);
            rx_n += 1;
            assert_eq!(ty, 22, "only handshake records follow the handshake");
            for a in session.on_handshake(&body).unwrap() {
                assert!(matches!(a, Action::TicketStored), "{a:?}");
                tickets += 1;
            }
        }
        assert!(
            tickets >= 1,
            "rustls servers send TLS 1.3 tickets by default"
        );

        // The server rolls its keys: the update decrypts with the old keys, the next data
        // only with the new ones.
        s.refresh_traffic_keys().unwrap();
        s.writer().write_all(b"after the update").unwrap();
        let recs = records(&flush(&mut s));
        assert_eq!(recs.len(), 2);
        let (ty, body) = open(&rx, rx_n, &recs[0].1);
        assert_eq!(ty, 22);
        let actions = session.on_handshake(&body).unwrap();
        let [action] = &actions[..] else {
            panic!("{actions:?}")
        };
        match action {
            Action::RekeyRx(new) => rx = *new,
            Action::RekeyBoth {
                rx: new,
                send,
                tx: new_tx,
            } => {
                rx = *new;
                assert_eq!(send, &[24, 0, 0, 1, 0]);
                assert_ne!(format!("{new_tx:?}"), format!("{tx:?}"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            open(&rx, 0, &recs[1].1),
            (23, b"after the update".to_vec()),
            "{suite:?}"
        );
        assert!(
            session.on_handshake(&[24, 0, 0, 1, 7]).is_err(),
            "a key_update that is neither 0 nor 1 is refused"
        );
    }
    assert_eq!(suites, 3, "AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305");
}

#[test]
fn without_the_kernel_module_the_session_stays_in_userspace_and_is_counted() {
    let ulp = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer = listener.accept().unwrap();

    let suite = rustls::crypto::ring::default_provider().cipher_suites[0];
    let (cc, sc) = configs(suite);
    let mut c =
        UnbufferedClientConnection::new(cc, ServerName::try_from("peer.test").unwrap()).unwrap();
    let mut s = ServerConnection::new(sc).unwrap();
    let flight = handshake(&mut c, &mut s, b"hello");
    feed(&mut s, &flight);
    let mut got = [0u8; 5];
    s.reader().read_exact(&mut got).unwrap();
    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
    metrics.register(&mut registry);
    match ktls::offload(&sock, c, &metrics) {
        Offload::Userspace { mut conn, reason } => {
            assert!(
                !ulp.split_whitespace().any(|u| u == "tls"),
                "fell back although the kernel has tls: {reason}"
            );
            assert_eq!(reason.reason(), "no_tls_ulp");
            assert!(reason.to_string().contains("no TLS ULP"), "{reason}");
            // The connection is untouched: it still talks TLS in userspace.
            let status = conn.process_tls_records(&mut []);
            let Some(ConnectionState::WriteTraffic(mut w)) = status.state.ok() else {
                panic!("the connection left its traffic state")
            };
            let mut buf = vec![0u8; 1024];
            let n = w.encrypt(b"still here", &mut buf).unwrap();
            feed(&mut s, &buf[..n]);
            let mut got = [0u8; 10];
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"still here");
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            assert!(
                text.contains(
                    r#"ghostwire_ktls_offloads_total{result="userspace",reason="no_tls_ulp"} 1"#
                ),
                "{text}"
            );
        }
        Offload::Kernel(_) => assert!(
            ulp.split_whitespace().any(|u| u == "tls"),
            "offloaded without tls in {ulp:?}"
        ),
        Offload::Failed(e) => panic!("the kernel took the ULP but refused the keys: {e}"),
    }
    // The data path's probe, before any handshake: the same answer, counted the same way.
    let fresh = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer = listener.accept().unwrap();
    let took = metrics.probe(&fresh);
    assert_eq!(took, ulp.split_whitespace().any(|u| u == "tls"), "{ulp:?}");
    if !took {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"ghostwire_ktls_offloads_total{result="userspace",reason="no_tls_ulp"} 2"#
            ),
            "{text}"
        );
    }
}

/// What the kernel does when it sends: seals `plain` as one application-data record with the
/// crypto-info, `n` records after the one its sequence number names.
fn seal(info: &TlsCryptoInfo, n: u64, plain: &[u8]) -> Vec<u8> {
    let (key, nonce) = record_key(info, n as i64);
    let mut body = plain.to_vec();
    body.push(23);
    let len = (body.len() + key.algorithm().tag_len()) as u16;
    let mut header = vec![23, 3, 3];
    header.extend_from_slice(&len.to_be_bytes());
    key.seal_in_place_append_tag(nonce, ring::aead::Aad::from(&header[..]), &mut body)
        .unwrap();
    header.extend_from_slice(&body);
    header
}

/// One whole TLS record read from a socket (header + ciphertext).
async fn read_record(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut rec = vec![0u8; 5];
    tcp.read_exact(&mut rec).await.unwrap();
    let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
    rec.resize(5 + len, 0);
    tcp.read_exact(&mut rec[5..]).await.unwrap();
    rec
}

/// A real connection on loopback: the kTLS data path's handshake (whole records only) against
/// a tokio-rustls server, then the keys and sequence numbers rustls hands out, used as the
/// kernel would: the client's first record, sealed with the transmit keys, is read by the
/// server as plaintext; the server's tickets and first reply, read raw off the socket, open
/// with the receive keys at the sequence numbers the hand-off names. A wrong key, IV or
/// sequence number fails the AEAD.
#[tokio::test]
async fn secrets_of_a_real_connection_seal_and_open_its_records() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for suite in rustls::crypto::ring::default_provider().cipher_suites {
        if suite.version() != &rustls::version::TLS13 {
            continue;
        }
        let (cc, sc) = configs(suite);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(sc)
                .accept(tcp)
                .await
                .unwrap();
            let mut got = [0u8; 21];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(b"pong from userspace TLS").await.unwrap();
            tls.flush().await.unwrap();
            got
        });
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = UnbufferedClientConnection::new(cc, ServerName::try_from("peer.test").unwrap())
            .unwrap();
        ktls::stream::handshake(&mut tcp, &mut c, Vec::new())
            .await
            .unwrap();
        let (secrets, kernel) = c.into_kernel().unwrap();
        let tx = crypto_info(ProtocolVersion::TLSv1_3, secrets.tx.0, &secrets.tx.1).unwrap();
        let rx = crypto_info(ProtocolVersion::TLSv1_3, secrets.rx.0, &secrets.rx.1).unwrap();
        let mut session = Session::new(kernel, ProtocolVersion::TLSv1_3);

        tcp.write_all(&seal(&tx, 0, b"ping from the kernel!"))
            .await
            .unwrap();
        assert_eq!(
            &server.await.unwrap(),
            b"ping from the kernel!",
            "{suite:?}"
        );

        let mut n = 0;
        let reply = loop {
            let rec = read_record(&mut tcp).await;
            assert_eq!(rec[0], 23, "TLS 1.3 records all look like application data");
            let (ty, body) = open(&rx, n, &rec);
            n += 1;
            match ty {
                22 => {
                    for a in session.on_handshake(&body).unwrap() {
                        assert!(matches!(a, Action::TicketStored), "{a:?}");
                    }
                }
                23 => break body,
                other => panic!("record type {other}"),
            }
        };
        assert_eq!(reply, b"pong from userspace TLS", "{suite:?}");
        assert!(n >= 2, "the server's tickets came first");
    }
}
