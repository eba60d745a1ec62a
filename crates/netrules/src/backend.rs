//! Choosing a backend and running apply → read back → verify.

use crate::exec::run;
use crate::model::{Family, Table};
use crate::{Error, Result, iptables, nft};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which iptables binaries to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesFlavour {
    /// `iptables-restore`, whatever the system's alternatives point at.
    System,
    /// `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-restore`.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Nftables,
    Iptables(IptablesFlavour),
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::Nftables => f.write_str("nftables"),
            BackendKind::Iptables(IptablesFlavour::System) => f.write_str("iptables"),
            BackendKind::Iptables(IptablesFlavour::Nft) => f.write_str("iptables-nft"),
            BackendKind::Iptables(IptablesFlavour::Legacy) => f.write_str("iptables-legacy"),
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nftables" | "nft" => Ok(BackendKind::Nftables),
            "iptables" => Ok(BackendKind::Iptables(IptablesFlavour::System)),
            "iptables-nft" => Ok(BackendKind::Iptables(IptablesFlavour::Nft)),
            "iptables-legacy" => Ok(BackendKind::Iptables(IptablesFlavour::Legacy)),
            _ => Err(format!(
                "unknown backend {s:?} (expected auto, nftables, iptables, iptables-nft or iptables-legacy)"
            )),
        }
    }
}

/// What the kernel holds of one table, normalised so that it compares equal to
/// the model's expectation exactly when the kernel has what the model says.
///
/// Keys: with nftables, set, map and chain names; with iptables (which expands
/// sets and maps into rules) `CHAIN@ipv4` / `CHAIN@ipv6`, using the built-in
/// chain name for hooks, with the rule lines as `iptables-save` prints them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// nftables only: each set's and map's declaration (key and data types, flags), by name.
    pub decls: BTreeMap<String, String>,
    pub sets: BTreeMap<String, BTreeSet<IpNet>>,
    pub maps: BTreeMap<String, BTreeSet<crate::DnatEntry>>,
    pub chains: BTreeMap<String, Vec<String>>,
}

impl Observed {
    /// Whether a chain of this name exists (in any family).
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains
            .keys()
            .any(|k| k == name || k.split('@').next() == Some(name))
    }

    /// A short, human-readable list of differences (for errors and logs).
    pub fn diff(&self, other: &Observed) -> String {
        fn keyed<V: PartialEq + fmt::Debug>(
            what: &str,
            a: &BTreeMap<String, V>,
            b: &BTreeMap<String, V>,
            out: &mut Vec<String>,
        ) {
            for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if x != y => {
                        out.push(format!("{what} {k}: expected {x:?}, found {y:?}"))
                    }
                    (Some(_), None) => out.push(format!("{what} {k}: missing")),
                    (None, Some(_)) => out.push(format!("{what} {k}: unexpected")),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        keyed("declaration of", &self.decls, &other.decls, &mut out);
        keyed("set", &self.sets, &other.sets, &mut out);
        keyed("map", &self.maps, &other.maps, &mut out);
        keyed("chain", &self.chains, &other.chains, &mut out);
        let more = out.len().saturating_sub(5);
        out.truncate(5);
        if more > 0 {
            out.push(format!("and {more} more"));
        }
        out.join("; ")
    }
}

fn family_key(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

/// A rule backend: renders, applies, reads back and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub kind: BackendKind,
    /// Seconds iptables waits for the xtables lock (`-w`).
    pub lock_wait_secs: u32,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl Backend {
    pub fn new(kind: BackendKind) -> Backend {
        Backend {
            kind,
            lock_wait_secs: 5,
        }
    }

    /// nftables if it can do what a NAT-map table needs here (checked by loading a
    /// scratch table in a transaction that also deletes it), else iptables if
    /// `iptables-save` works.
    pub fn detect() -> Result<Backend> {
        let scratch = format!("gw_probe_{}", std::process::id());
        let nft = match run("nft", &["-f", "-"], Some(&nft::render_probe(&scratch))) {
            Ok(_) => return Ok(Backend::new(BackendKind::Nftables)),
            Err(e) => e.to_string(),
        };
        tracing::info!(error = %nft, "nftables cannot load a NAT map here; trying iptables");
        match run("iptables-save", &["-t", "nat"], None) {
            Ok(_) => Ok(Backend::new(BackendKind::Iptables(IptablesFlavour::System))),
            Err(e) => Err(Error::NoBackend {
                nft,
                iptables: e.to_string(),
            }),
        }
    }

    fn ipt_bin(&self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        match self.kind {
            BackendKind::Iptables(IptablesFlavour::Nft) => format!("{base}-nft-{tool}"),
            BackendKind::Iptables(IptablesFlavour::Legacy) => format!("{base}-legacy-{tool}"),
            _ => format!("{base}-{tool}"),
        }
    }

    fn ipt_read(&self, family: Family, tag: &str) -> Result<iptables::Owned> {
        let save = run(&self.ipt_bin(family, "save"), &["-t", "nat"], None)?;
        iptables::parse_save(&save, tag)
    }

    fn ipt_restore(&self, family: Family, input: &str) -> Result<()> {
        let wait = self.lock_wait_secs.to_string();
        run(
            &self.ipt_bin(family, "restore"),
            &["--noflush", "-w", &wait],
            Some(input),
        )?;
        Ok(())
    }

    /// What reading `t` back must give after a successful apply.
    pub fn expected(&self, t: &Table) -> Result<Observed> {
        t.validate()?;
        match self.kind {
            BackendKind::Nftables => Ok(nft::expected(t)),
            BackendKind::Iptables(_) => {
                let mut o = Observed::default();
                for f in iptables::families(t) {
                    for (c, lines) in iptables::expected(t, f)?.chains {
                        o.chains.insert(format!("{c}@{}", family_key(f)), lines);
                    }
                }
                Ok(o)
            }
        }
    }

    /// Reads what the kernel holds of table `t` (only its own objects).
    pub fn read(&self, t: &Table) -> Result<Observed> {
        if self.kind == BackendKind::Nftables
            && let Some(o) = crate::nft_read::read(t)?
        {
            return Ok(o);
        }
        self.read_named(&t.name, &iptables::families(t))
    }

    fn read_named(&self, table: &str, families: &BTreeSet<Family>) -> Result<Observed> {
        match self.kind {
            BackendKind::Nftables => {
                // The slow way, when a rule in the kernel is not one of the model's
                // (see nft_read): `nft -t` lists the declarations, chains and rules and
                // names every field of a rule; it leaves out the elements of named sets
                // and maps, which are dumped over netlink.
                match run("nft", &["-j", "-t", "list", "table", "inet", table], None) {
                    Ok(json) => {
                        let mut o = nft::parse(&json)?;
                        nft::fill_elements(&mut o, |set| {
                            crate::netlink::nft_set_elements(table, set).map_err(|e| Error::Parse {
                                tool: "netlink",
                                reason: format!("reading the elements of {table} {set}: {e}"),
                            })
                        })?;
                        Ok(o)
                    }
                    Err(crate::ExecError::Failed { stderr, .. })
                        if stderr.contains("No such file or directory") =>
                    {
                        Ok(Observed::default())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            BackendKind::Iptables(_) => {
                let mut o = Observed::default();
                for &f in families {
                    for (c, lines) in self.ipt_read(f, &format!("{table}:"))?.chains {
                        o.chains.insert(format!("{c}@{}", family_key(f)), lines);
                    }
                }
                Ok(o)
            }
        }
    }

    /// The transaction(s) that `apply` would run now, for `--dry-run`.
    /// With iptables it depends on what is there; if that cannot be read,
    /// it is rendered as if nothing of ours were there.
    pub fn render(&self, t: &Table) -> Result<String> {
        t.validate()?;
        match self.kind {
            BackendKind::Nftables => Ok(nft::render_table(t)),
            BackendKind::Iptables(_) => {
                let mut out = String::new();
                for f in iptables::families(t) {
                    let current = self.ipt_read(f, &t.tag()).unwrap_or_default();
                    out.push_str(&format!("# {}\n", self.ipt_bin(f, "restore")));
                    out.push_str(&iptables::render(&iptables::expected(t, f)?, &current));
                }
                Ok(out)
            }
        }
    }

    /// Makes the kernel hold exactly `t` (one transaction per family), then reads
    /// it back and checks it. Applying the same table twice changes nothing.
    pub fn apply(&self, t: &Table) -> Result<Observed> {
        t.validate()?;
        match self.kind {
            BackendKind::Nftables => {
                let current = self.read(t)?;
                // A set or map kept but declared otherwise (its type, its flags) cannot be
                // changed in place: the table is replaced.
                let same_decls = nft::expected(t)
                    .decls
                    .iter()
                    .all(|(name, d)| current.decls.get(name).is_none_or(|c| c == d));
                let in_place = current != Observed::default()
                    && same_decls
                    && match run("nft", &["-f", "-"], Some(&nft::render_update(t, &current))) {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::info!(table = %t.name, error = %e, "cannot update the table in place (a declaration changed); replacing it");
                            false
                        }
                    };
                if !in_place {
                    run("nft", &["-f", "-"], Some(&nft::render_table(t)))?;
                }
            }
            BackendKind::Iptables(_) => {
                let used = iptables::families(t);
                for f in [Family::Ipv4, Family::Ipv6] {
                    let want = if used.contains(&f) {
                        iptables::expected(t, f)?
                    } else {
                        iptables::Owned::default()
                    };
                    let current = match self.ipt_read(f, &t.tag()) {
                        Ok(c) => c,
                        // No ip6tables on this host and nothing IPv6 wanted: nothing to do.
                        Err(_) if !used.contains(&f) => continue,
                        Err(e) => return Err(e),
                    };
                    if want != current {
                        self.ipt_restore(f, &iptables::render(&want, &current))?;
                    }
                }
            }
        }
        self.verify(t)
    }

    /// Replaces the rules of one chain of `t` only (e.g. the jump of a base chain),
    /// atomically, then verifies that chain.
    pub fn apply_chain(&self, t: &Table, chain: &str) -> Result<Observed> {
        t.validate()?;
        let c = t.chain(chain).ok_or_else(|| {
            Error::Model(crate::ModelError::Unknown {
                chain: chain.to_string(),
                what: "chain",
                name: chain.to_string(),
            })
        })?;
        match self.kind {
            BackendKind::Nftables => {
                run("nft", &["-f", "-"], Some(&nft::render_chain(t, c)))?;
            }
            BackendKind::Iptables(_) => {
                let key = c.hook.map_or(c.name.as_str(), |h| h.iptables_chain());
                for f in iptables::families(t) {
                    let pick = |o: iptables::Owned| iptables::Owned {
                        chains: o.chains.into_iter().filter(|(k, _)| k == key).collect(),
                    };
                    let want = pick(iptables::expected(t, f)?);
                    let current = pick(self.ipt_read(f, &t.tag())?);
                    if want != current {
                        self.ipt_restore(f, &iptables::render(&want, &current))?;
                    }
                }
            }
        }
        let got = self.read(t)?;
        let want = self.expected(t)?;
        let only = |o: &Observed| Observed {
            chains: o
                .chains
                .iter()
                .filter(|(k, _)| {
                    let base = k.split('@').next().unwrap_or_default();
                    base == chain || c.hook.is_some_and(|h| base == h.iptables_chain())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Observed::default()
        };
        if only(&want) != only(&got) {
            return Err(Error::Verify {
                backend: self.to_string(),
                diff: only(&want).diff(&only(&got)),
            });
        }
        Ok(got)
    }

    /// Reads `t` back and fails with the differences if it is not what the model says.
    pub fn verify(&self, t: &Table) -> Result<Observed> {
        let want = self.expected(t)?;
        let got = self.read(t)?;
        if want != got {
            return Err(Error::Verify {
                backend: self.to_string(),
                diff: want.diff(&got),
            });
        }
        Ok(got)
    }

    /// Removes everything of table `name` (both families) and nothing else.
    /// Removing what is not there is not an error.
    pub fn cleanup(&self, name: &str) -> Result<()> {
        match self.kind {
            BackendKind::Nftables => {
                run("nft", &["-f", "-"], Some(&nft::render_cleanup(name)))?;
            }
            BackendKind::Iptables(_) => {
                let tag = format!("{name}:");
                for f in [Family::Ipv4, Family::Ipv6] {
                    let current = match self.ipt_read(f, &tag) {
                        Ok(c) => c,
                        Err(_) if f == Family::Ipv6 => continue,
                        Err(e) => return Err(e),
                    };
                    if !current.chains.is_empty() {
                        self.ipt_restore(f, &iptables::render(&Default::default(), &current))?;
                    }
                }
            }
        }
        let empty = Table {
            name: name.to_string(),
            sets: vec![],
            maps: vec![],
            chains: vec![],
        };
        let left = self.read(&empty)?;
        if left != Observed::default() {
            return Err(Error::Verify {
                backend: self.to_string(),
                diff: format!("after cleanup: {}", Observed::default().diff(&left)),
            });
        }
        Ok(())
    }
}
