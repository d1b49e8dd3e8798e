//! HTTP/3's UDP sockets (`http.http3`): for each TLS TCP address, one
//! `SO_REUSEPORT` group on the same port, kept by the master, in which the
//! socket at index `i` is scoreboard slot `i`'s (`base + i` after a binary
//! upgrade: the old master's sockets come first). Sockets are made in slot
//! order, up to the highest slot that ever served, and stay open until the
//! master exits: the kernel renumbers a group when a member closes, and
//! the connection IDs a worker issued name its index
//! ([`crate::os::steering`]).
//!
//! A worker reads its slot's socket; when it exits, the socket stays in the
//! master with whatever datagrams arrive for the connections it had (the
//! next worker of that slot answers them with a stateless reset, which
//! ends those connections at once instead of after the idle timeout).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::os::steering;

/// The most slots a group can name: a connection ID names its socket in
/// [`steering::SEAT_BYTES`] bytes.
const MAX_SEATS: usize = 1 << (8 * steering::SEAT_BYTES);

/// Why a UDP socket for HTTP/3 could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicGroupError {
    /// `socket`, `setsockopt` or `bind` failed.
    #[error("cannot bind UDP {addr} for HTTP/3: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The steering program was refused.
    #[error("cannot attach the QUIC steering program to UDP {addr}: {source}")]
    Steer {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// More slots than a connection ID can name.
    #[error("slot {0} is past the {MAX_SEATS} sockets a QUIC connection ID can name")]
    TooManySlots(usize),
}

/// Every group, by the TCP address it shadows.
#[derive(Default)]
pub struct QuicGroups {
    groups: Vec<Group>,
}

struct Group {
    /// The TCP address as configured (port 0 included); not known yet for
    /// a group inherited from the master of a binary upgrade until a
    /// worker serves its address.
    tcp: Option<SocketAddr>,
    /// The address bound: the TCP listener's own port.
    udp: SocketAddr,
    /// Sockets inherited from the master this one upgraded from, whose
    /// workers own the connections those indexes name: this master's slot
    /// `i` has index `base + i`.
    base: usize,
    /// Index = `base` + slot.
    sockets: Vec<OwnedFd>,
    /// The new-connection seats last attached.
    seats: Option<Vec<u16>>,
    /// Why the last attach failed, if it did.
    refused: Option<String>,
}

impl QuicGroups {
    /// The groups of the master this one upgrades from, each socket in
    /// the order of its group (as [`Self::handed_over`] lists them): kept,
    /// so their indexes keep naming that master's workers, which still own
    /// connections; this master's workers get the indexes after them.
    pub fn inherited(sockets: Vec<OwnedFd>) -> QuicGroups {
        let mut groups: Vec<Group> = Vec::new();
        for fd in sockets {
            let Some(udp) = SockRef::from(&fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
            else {
                continue;
            };
            match groups.iter_mut().find(|g| g.udp == udp) {
                Some(g) => g.sockets.push(fd),
                None => groups.push(Group {
                    tcp: None,
                    udp,
                    base: 0,
                    sockets: vec![fd],
                    seats: None,
                    refused: None,
                }),
            }
        }
        for g in &mut groups {
            g.base = g.sockets.len();
        }
        QuicGroups { groups }
    }

    /// Every socket, group after group, each in its group's order: what a
    /// binary upgrade hands to the new master.
    pub fn handed_over(&self) -> impl Iterator<Item = &OwnedFd> {
        self.groups.iter().flat_map(|g| &g.sockets)
    }

    /// Slot `slot`'s socket of the group for `tcp` (bound on `bound`, the
    /// TCP listener's actual address), made along with those of lower
    /// slots if they do not exist yet: a new descriptor for the worker,
    /// and its index in the group (what its connection IDs name).
    pub fn socket_of(
        &mut self,
        tcp: SocketAddr,
        bound: SocketAddr,
        slot: usize,
    ) -> Result<(OwnedFd, u16), QuicGroupError> {
        let known = self.groups.iter().position(|g| g.tcp == Some(tcp));
        let inherited = || {
            self.groups
                .iter()
                .position(|g| g.tcp.is_none() && g.udp == bound)
        };
        let at = match known.or_else(inherited) {
            Some(i) => i,
            None => {
                self.groups.push(Group {
                    tcp: None,
                    udp: bound,
                    base: 0,
                    sockets: Vec::new(),
                    seats: None,
                    refused: None,
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[at];
        group.tcp = Some(tcp);
        let seat = group.base + slot;
        let Ok(index) = u16::try_from(seat) else {
            return Err(QuicGroupError::TooManySlots(seat));
        };
        while group.sockets.len() <= seat {
            let s = bind_member(group.udp).map_err(|source| QuicGroupError::Bind {
                addr: group.udp,
                source,
            })?;
            group.sockets.push(s);
        }
        let fd = group.sockets[seat]
            .try_clone()
            .map_err(|source| QuicGroupError::Bind {
                addr: group.udp,
                source,
            })?;
        Ok((fd, index))
    }

    /// Closes the groups of the TCP addresses not in `keep` (their port
    /// closes, so a client remembering `Alt-Svc` falls back to TCP at once
    /// instead of waiting on sockets nobody reads); their UDP addresses.
    /// A group inherited from a binary upgrade that no worker of this
    /// master serves stays while `inherited_read` (the old master's workers
    /// may still read it).
    pub fn retain(&mut self, keep: &[SocketAddr], inherited_read: bool) -> Vec<SocketAddr> {
        let mut closed = Vec::new();
        self.groups.retain(|g| {
            let kept = g.tcp.map_or(inherited_read, |tcp| keep.contains(&tcp));
            if !kept {
                closed.push(g.udp);
            }
            kept
        });
        closed
    }

    /// No group yet (`http.http3` off, or no worker started).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Sends new connections to `slots` (the ready serving slots of the
    /// current generation) in every group whose table differs, or in every
    /// group with `again` (another master may have attached its own). A
    /// slot without a socket yet is left out; no seat at all lets the
    /// kernel choose by hash rather than drop the handshake.
    pub fn steer(&mut self, slots: &[usize], again: bool) -> Result<(), QuicGroupError> {
        for g in &mut self.groups {
            let mine: Vec<u16> = slots
                .iter()
                .map(|&s| g.base + s)
                .filter(|&s| s < g.sockets.len())
                .filter_map(|s| u16::try_from(s).ok())
                .collect();
            if !again && g.seats.as_ref() == Some(&mine) {
                continue;
            }
            // Any member attaches for the whole group.
            let Some(first) = g.sockets.first() else {
                continue;
            };
            let attached = steering::attach(first.as_fd(), &mine);
            // A refusal is reported once per change of seats, not retried
            // at every turn of the master's loop.
            g.seats = Some(mine);
            attached.map_err(|source| QuicGroupError::Steer {
                addr: g.udp,
                source,
            })?;
        }
        Ok(())
    }
}

impl QuicGroups {
    /// What `rsvisor status` shows of each group.
    pub fn status(&self) -> Vec<crate::proto::control::Http3Status> {
        self.groups
            .iter()
            .map(|g| crate::proto::control::Http3Status {
                udp: g.udp.to_string(),
                sockets: g.sockets.len(),
                new_connection_slots: g
                    .seats
                    .iter()
                    .flatten()
                    .map(|&s| usize::from(s).saturating_sub(g.base))
                    .collect(),
                steering: match &g.refused {
                    None => STEERING.to_string(),
                    Some(why) => format!("kernel hash (the steering program was refused: {why})"),
                },
            })
            .collect()
    }
}

/// How `status` and `check` name the steering that runs.
pub const STEERING: &str = "classic BPF by connection ID (SO_ATTACH_REUSEPORT_CBPF)";

/// Whether this kernel takes the steering program (`rsvisor check`): on a
/// throwaway group on loopback.
pub fn probe_steering() -> Result<(), QuicGroupError> {
    let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let member = bind_member(addr).map_err(|source| QuicGroupError::Bind { addr, source })?;
    steering::attach(member.as_fd(), &[0]).map_err(|source| QuicGroupError::Steer { addr, source })
}

fn bind_member(addr: SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// The sockets are made in slot order on the TCP listener's port, and
    /// a datagram whose connection ID names slot 2 reaches slot 2's
    /// socket, whichever slots were asked for first.
    #[test]
    fn slots_are_group_indexes() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = tcp.local_addr().unwrap();
        let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut groups = QuicGroups::default();
        let (two, seat) = groups.socket_of(configured, bound, 2).unwrap();
        assert_eq!(seat, 2);
        let (zero, _) = groups.socket_of(configured, bound, 0).unwrap();
        groups.steer(&[0], false).unwrap();
        let two = UdpSocket::from(two);
        let zero = UdpSocket::from(zero);
        assert_eq!(two.local_addr().unwrap(), bound);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A short header: flags, then the ID whose first two bytes are 2.
        client
            .send_to(&[0x40, 0, 2, 9, 9, 9, 9, 9, 9], bound)
            .unwrap();
        two.set_nonblocking(false).unwrap();
        two.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(two.recv(&mut buf).unwrap(), 9);
        zero.set_nonblocking(true).unwrap();
        assert!(zero.recv(&mut buf).is_err());
    }

    #[test]
    fn a_slot_past_what_an_id_names_is_refused() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = tcp.local_addr().unwrap();
        let err = QuicGroups::default()
            .socket_of(bound, bound, MAX_SEATS)
            .unwrap_err();
        assert!(matches!(err, QuicGroupError::TooManySlots(_)), "{err}");
    }
}
