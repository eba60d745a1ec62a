//! DHCPv4 on the tunnel: [`server`] (the gateway sidecar's) and [`client`] (client init's).

pub mod client;
pub mod server;

/// The key a lease is kept under: the client identifier (option 61) when the client sends one,
/// else its hardware address. Client init sends `0x00 + hostname`, so a Pod keeps its address
/// when its tunnel (and with it its MAC) is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientKey {
    Id(Vec<u8>),
    Hw(Vec<u8>),
}

impl ClientKey {
    pub fn of(msg: &dhcproto::v4::Message) -> ClientKey {
        use dhcproto::v4::{DhcpOption, OptionCode};
        match msg.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => ClientKey::Id(id.clone()),
            _ => ClientKey::Hw(msg.chaddr().to_vec()),
        }
    }
}

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
