//! kTLS for Pods that ask for it (`ghostwire.dev/ktls`): once rustls has finished a handshake,
//! the session keys go to the kernel (`TCP_ULP "tls"`, then `TLS_TX`/`TLS_RX`) so that
//! `sendfile`/`splice` and plain reads and writes are encrypted in the kernel. Where the kernel
//! has no TLS module (this project's CI kernel has none: `tcp_available_ulp` lists only `mptcp`),
//! the connection stays in userspace TLS, with a log line and a metric saying why.
//!
//! After the hand-off rustls keeps only what the kernel cannot do: TLS 1.3 session tickets and
//! key updates ([`Session::on_handshake`]); the caller reads records with `recvmsg` and hands
//! any non-data record (its type is in the `TLS_GET_RECORD_TYPE` control message) here.
//!
//! Safe code only: nix wraps the socket options; the crypto-info layouts are libc's.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{setsockopt, sockopt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

pub use nix::sys::socket::sockopt::TlsCryptoInfo;

pub mod stream;

#[derive(Debug, thiserror::Error)]
pub enum KtlsError {
    #[error("the kernel has no TLS ULP ({0}); is the `tls` module built and loaded?")]
    NoUlp(nix::errno::Errno),
    #[error("kTLS supports TLS 1.2 and 1.3, not {0:?}")]
    Version(ProtocolVersion),
    #[error("the kernel refused the {direction} keys: {errno}")]
    Keys {
        direction: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("rustls would not hand over the session: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("handshake record in a kTLS session is malformed: {0}")]
    Record(&'static str),
}

impl KtlsError {
    /// A short, bounded label for the fallback metric.
    pub fn reason(&self) -> &'static str {
        match self {
            KtlsError::NoUlp(_) => "no_tls_ulp",
            KtlsError::Version(_) => "tls_version",
            KtlsError::Keys { .. } => "keys_refused",
            KtlsError::Rustls(_) => "session_state",
            KtlsError::Record(_) => "bad_record",
        }
    }
}

/// The kernel's crypto-info for one direction: the AEAD key, the static IV split as the kernel
/// wants it (a 4-byte salt and 8 bytes for AES-GCM; 12 bytes and no salt for ChaCha20), and the
/// next record's sequence number.
pub fn crypto_info(
    version: ProtocolVersion,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Result<TlsCryptoInfo, KtlsError> {
    let version = match version {
        ProtocolVersion::TLSv1_2 => libc::TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => libc::TLS_1_3_VERSION,
        other => return Err(KtlsError::Version(other)),
    };
    let rec_seq = seq.to_be_bytes();
    Ok(match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_128,
                },
                iv: iv.try_into().expect("rustls IVs are 12 bytes"),
                key: key.as_ref().try_into().expect("AES-128 keys are 16 bytes"),
                salt: salt.try_into().expect("split at 4"),
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_256,
                },
                iv: iv.try_into().expect("rustls IVs are 12 bytes"),
                key: key.as_ref().try_into().expect("AES-256 keys are 32 bytes"),
                salt: salt.try_into().expect("split at 4"),
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305,
                },
                iv: iv.as_ref().try_into().expect("rustls IVs are 12 bytes"),
                key: key.as_ref().try_into().expect("ChaCha20 keys are 32 bytes"),
                salt: [],
                rec_seq,
            })
        }
        _ => return Err(KtlsError::Record("cipher suite kTLS does not offer")),
    })
}

/// Attaches the TLS ULP to a connected TCP socket: the cheap test of kernel support, made on
/// the very socket before rustls gives up the session, so a refusal leaves userspace TLS intact.
pub fn attach_ulp(sock: &impl AsFd) -> Result<(), KtlsError> {
    setsockopt(sock, sockopt::TcpUlp::default(), b"tls").map_err(KtlsError::NoUlp)
}

fn set_keys(
    sock: &impl AsFd,
    tx: Option<&TlsCryptoInfo>,
    rx: Option<&TlsCryptoInfo>,
) -> Result<(), KtlsError> {
    if let Some(tx) = tx {
        setsockopt(sock, sockopt::TcpTlsTx, tx).map_err(|errno| KtlsError::Keys {
            direction: "transmit",
            errno,
        })?;
    }
    if let Some(rx) = rx {
        setsockopt(sock, sockopt::TcpTlsRx, rx).map_err(|errno| KtlsError::Keys {
            direction: "receive",
            errno,
        })?;
    }
    Ok(())
}

/// A rustls connection that can give its session to the kernel. rustls offers the kernel
/// hand-off (with key updates and tickets) on its unbuffered connections only, so a kTLS data
/// path drives its handshake with those.
pub trait IntoKernel: Sized {
    type Data: Tickets;
    fn version(&self) -> Option<ProtocolVersion>;
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

impl IntoKernel for rustls::client::UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn version(&self) -> Option<ProtocolVersion> {
        self.protocol_version()
    }
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

impl IntoKernel for rustls::server::UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn version(&self) -> Option<ProtocolVersion> {
        self.protocol_version()
    }
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

/// Session tickets go to clients only; a server that receives one refuses it.
pub trait Tickets: Sized {
    fn ticket(kernel: &mut KernelConnection<Self>, body: &[u8]) -> Result<(), KtlsError>;
}

impl Tickets for rustls::client::ClientConnectionData {
    fn ticket(kernel: &mut KernelConnection<Self>, body: &[u8]) -> Result<(), KtlsError> {
        Ok(kernel.handle_new_session_ticket(body)?)
    }
}

impl Tickets for rustls::server::ServerConnectionData {
    fn ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> Result<(), KtlsError> {
        Err(KtlsError::Record("a client sent a session ticket"))
    }
}

/// The result of trying to offload: the kernel has the session, or userspace keeps it.
pub enum Offload<C: IntoKernel> {
    Kernel(Box<Session<C::Data>>),
    /// Nothing was changed: carry on with `conn` in userspace.
    Userspace {
        conn: C,
        reason: KtlsError,
    },
    /// The session left rustls but the kernel refused it: close the connection.
    Failed(KtlsError),
}

/// Hands `conn` (handshake finished, nothing left to write) to the kernel on `sock`, or gives
/// it back with the reason; counts either way. The config must have
/// `enable_secret_extraction = true`.
pub fn offload<C: IntoKernel>(sock: &impl AsFd, conn: C, metrics: &Metrics) -> Offload<C> {
    if let Err(reason) = version(&conn) {
        return metrics.fallback(conn, reason);
    }
    if let Err(reason) = attach_ulp(sock) {
        return metrics.fallback(conn, reason);
    }
    // From here the socket has the ULP and rustls has given up the session: a failure can
    // only close the connection (the caller's userspace TLS has nothing left to resume).
    match install(sock, conn, metrics) {
        Ok(s) => Offload::Kernel(Box::new(s)),
        Err(e) => Offload::Failed(e),
    }
}

fn version<C: IntoKernel>(conn: &C) -> Result<ProtocolVersion, KtlsError> {
    match conn.version() {
        Some(v @ (ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)) => Ok(v),
        other => Err(KtlsError::Version(
            other.unwrap_or(ProtocolVersion::Unknown(0)),
        )),
    }
}

/// The session out of rustls and its keys into the socket, whose ULP is attached; counts
/// `kernel` or `failed`.
fn install<C: IntoKernel>(
    sock: &impl AsFd,
    conn: C,
    metrics: &Metrics,
) -> Result<Session<C::Data>, KtlsError> {
    let result = version(&conn).and_then(|version| {
        let (secrets, kernel) = conn.into_kernel()?;
        let tx = crypto_info(version, secrets.tx.0, &secrets.tx.1)?;
        let rx = crypto_info(version, secrets.rx.0, &secrets.rx.1)?;
        set_keys(sock, Some(&tx), Some(&rx))?;
        Ok(Session { kernel, version })
    });
    match &result {
        Ok(_) => {
            metrics.offloads.get_or_create(&Labels::kernel()).inc();
        }
        Err(e) => {
            metrics
                .offloads
                .get_or_create(&Labels::failed(e.reason()))
                .inc();
            tracing::warn!(error = %e, "kTLS hand-off failed after the session left rustls");
        }
    }
    result
}

/// What the data path must do after a handshake record arrived on a kTLS socket.
#[derive(Debug)]
pub enum Action {
    /// A TLS 1.3 session ticket, kept by rustls for resumption.
    TicketStored,
    /// The peer rolled its keys: install these as the new receive keys.
    RekeyRx(TlsCryptoInfo),
    /// The peer rolled its keys and asks us to roll ours: install `rx`, send `key_update`
    /// (the bytes, as a handshake record under the old transmit keys), then install `tx`.
    RekeyBoth {
        rx: TlsCryptoInfo,
        send: Vec<u8>,
        tx: TlsCryptoInfo,
    },
}

/// A session the kernel encrypts; rustls kept for tickets and key updates.
pub struct Session<D> {
    kernel: KernelConnection<D>,
    version: ProtocolVersion,
}

impl<D: Tickets> Session<D> {
    /// For a session whose keys were installed by other means (and for tests, which play the
    /// kernel's part in userspace).
    pub fn new(kernel: KernelConnection<D>, version: ProtocolVersion) -> Session<D> {
        Session { kernel, version }
    }

    /// Handles one decrypted handshake record (record type 22) of a TLS 1.3 session.
    pub fn on_handshake(&mut self, record: &[u8]) -> Result<Vec<Action>, KtlsError> {
        let kernel = &mut self.kernel;
        let mut actions = Vec::new();
        let mut rest = record;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(KtlsError::Record("truncated handshake header"));
            }
            let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
            let body = rest
                .get(4..4 + len)
                .ok_or(KtlsError::Record("truncated handshake body"))?;
            match rest[0] {
                4 => {
                    D::ticket(kernel, body)?;
                    actions.push(Action::TicketStored);
                }
                24 => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(KtlsError::Record("key_update body is not 0 or 1")),
                    };
                    let (seq, secrets) = kernel.update_rx_secret()?;
                    let rx = crypto_info(self.version, seq, &secrets)?;
                    if requested {
                        let (seq, secrets) = kernel.update_tx_secret()?;
                        let tx = crypto_info(self.version, seq, &secrets)?;
                        // key_update(update_not_requested): type 24, length 1, value 0.
                        let send = vec![24, 0, 0, 1, 0];
                        actions.push(Action::RekeyBoth { rx, send, tx });
                    } else {
                        actions.push(Action::RekeyRx(rx));
                    }
                }
                _ => {
                    return Err(KtlsError::Record(
                        "handshake message not allowed after the handshake",
                    ));
                }
            }
            rest = &rest[4 + len..];
        }
        Ok(actions)
    }

    /// Applies the key-installing part of `action` to the socket.
    pub fn apply(&self, sock: &impl AsFd, action: &Action) -> Result<(), KtlsError> {
        match action {
            Action::TicketStored => Ok(()),
            Action::RekeyRx(rx) => set_keys(sock, None, Some(rx)),
            Action::RekeyBoth { rx, tx, .. } => set_keys(sock, Some(tx), Some(rx)),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    /// `kernel`, `userspace` (fell back, connection fine) or `failed` (closed).
    pub result: &'static str,
    pub reason: &'static str,
}

impl Labels {
    fn kernel() -> Labels {
        Labels {
            result: "kernel",
            reason: "",
        }
    }
    fn failed(reason: &'static str) -> Labels {
        Labels {
            result: "failed",
            reason,
        }
    }
}

/// `<prefix>_ktls_offloads_total{result, reason}`. The first fallback for each reason is
/// logged at info, later ones at debug (a kernel without the module falls back on every
/// connection).
#[derive(Default, Clone, Debug)]
pub struct Metrics {
    pub offloads: Family<Labels, Counter>,
    logged: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Metrics {
    /// Registers `ktls_offloads` under `registry` (give it a prefix, e.g. `ghostwire`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ktls_offloads",
            "kTLS hand-offs by result (kernel, userspace fallback, failed) and reason",
            self.offloads.clone(),
        );
    }

    /// The cheap test before a handshake: attaches the TLS ULP to `sock` (which changes
    /// nothing until keys are installed). `false`: the kernel refused it; the fallback is
    /// counted and logged, and the socket is as it was, for userspace TLS.
    pub fn probe(&self, sock: &impl AsFd) -> bool {
        match attach_ulp(sock) {
            Ok(()) => true,
            Err(reason) => {
                self.count_fallback(&reason);
                false
            }
        }
    }

    fn count_fallback(&self, reason: &KtlsError) {
        let label = reason.reason();
        self.offloads
            .get_or_create(&Labels {
                result: "userspace",
                reason: label,
            })
            .inc();
        let first = self
            .logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label);
        if first {
            tracing::info!(reason = %reason, "kTLS not available; TLS stays in userspace");
        } else {
            tracing::debug!(reason = %reason, "kTLS not available; TLS stays in userspace");
        }
    }

    fn fallback<C: IntoKernel>(&self, conn: C, reason: KtlsError) -> Offload<C> {
        self.count_fallback(&reason);
        Offload::Userspace { conn, reason }
    }
}
