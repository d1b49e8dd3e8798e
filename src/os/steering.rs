//! Steering QUIC datagrams among the UDP sockets of one `SO_REUSEPORT`
//! group: a classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+,
//! no privilege needed, unlike an eBPF `SK_REUSEPORT` program) returns the
//! index of the socket a datagram goes to. Indexes are the order in which
//! the sockets joined the group, so they stay put only while no member
//! closes: the owner of the group keeps every member open.
//!
//! The connection IDs a server issues start with [`SEAT_BYTES`] bytes of
//! its socket's index (big-endian), so every packet of a connection finds
//! its socket: short-header packets and Handshake packets carry such an ID.
//! Initial and 0-RTT packets carry the client's random ID instead; they go
//! to one of the sockets in the program's table of new-connection seats,
//! picked by the ID's first four bytes, the same for every packet of one
//! handshake. A seat past the group's end lets the kernel pick by its own
//! hash; a datagram too short for what the program loads goes to the
//! first socket (classic BPF returns 0 when a load is out of bounds), as
//! garbage: it cannot belong to a connection.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::sock_filter;

/// Bytes of a connection ID that name the socket (the first ones).
pub const SEAT_BYTES: usize = 2;

/// The most seats a table may name: each takes two instructions, and
/// classic BPF allows `BPF_MAXINSNS` in all.
pub const MAX_NEW_CONNECTION_SEATS: usize = 1024;

/// asm-generic's number for it (x86-64, arm64, riscv…); libc declares it
/// only for Android.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// "None of mine": the kernel chooses by hash.
const KERNEL_CHOOSES: u32 = u32::MAX;

/// Where a long-header packet's destination ID starts: first byte (1),
/// version (4), ID length (1). A short header's starts at 1.
const LONG_DCID_AT: u32 = 6;
const SHORT_DCID_AT: u32 = 1;
/// Long header form bit, and the packet-type bits with the QUIC v1 value
/// of a Handshake packet (RFC 9000 §17.2).
const LONG_FORM: u32 = 0x80;
const TYPE_BITS: u32 = 0x30;
const TYPE_HANDSHAKE: u32 = 0x20;

fn stmt(code: u32, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program for a group whose new connections go to the sockets
/// `new_conns` (indexes in the group; empty: the kernel's hash).
pub fn program(new_conns: &[u16]) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD,
        BPF_MOD, BPF_RET, BPF_W,
    };
    const BPF_A: u32 = 0x10;
    let new_conns = &new_conns[..new_conns.len().min(MAX_NEW_CONNECTION_SEATS)];
    let mut p = vec![
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        // Long header: skip the short header's two instructions.
        jump(BPF_JMP | BPF_JSET | BPF_K, LONG_FORM, 2, 0),
        stmt(BPF_LD | BPF_H | BPF_ABS, SHORT_DCID_AT),
        stmt(BPF_RET | BPF_A, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, TYPE_BITS),
        // Not a Handshake packet: skip its two instructions.
        jump(BPF_JMP | BPF_JEQ | BPF_K, TYPE_HANDSHAKE, 0, 2),
        stmt(BPF_LD | BPF_H | BPF_ABS, LONG_DCID_AT),
        stmt(BPF_RET | BPF_A, 0),
    ];
    if !new_conns.is_empty() {
        p.push(stmt(BPF_LD | BPF_W | BPF_ABS, LONG_DCID_AT));
        p.push(stmt(BPF_ALU | BPF_MOD | BPF_K, new_conns.len() as u32));
        for (i, &seat) in new_conns.iter().enumerate() {
            // Equal: the next instruction returns the seat; otherwise on
            // to the next comparison.
            p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, i as u32, 0, 1));
            p.push(stmt(BPF_RET | BPF_K, u32::from(seat)));
        }
    }
    p.push(stmt(BPF_RET | BPF_K, KERNEL_CHOOSES));
    p
}

/// Attaches (or replaces at once) the steering program of the group
/// `member` belongs to; the kernel checks it.
pub fn attach(member: BorrowedFd<'_>, new_conns: &[u16]) -> io::Result<()> {
    let filter = program(new_conns);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the
    // kernel copies the program and validates it; the descriptor is
    // borrowed, so open for the call.
    let rc = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    //! The program in the kernel: a group of UDP sockets on loopback, and
    //! datagrams shaped like QUIC packets sent to it.
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use socket2::{Domain, Socket, Type};

    const WAIT: Duration = Duration::from_secs(5);

    fn group(n: usize) -> Vec<UdpSocket> {
        let mut addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        (0..n)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
                s.set_reuse_port(true).expect("SO_REUSEPORT");
                s.bind(&addr.into()).expect("bind");
                let s = UdpSocket::from(s);
                s.set_nonblocking(true).expect("nonblocking");
                addr = s.local_addr().expect("local address");
                s
            })
            .collect()
    }

    fn short(seat: u16) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(&seat.to_be_bytes());
        p.extend_from_slice(&[7; 30]);
        p
    }

    fn long(first: u8, dcid: [u8; 8]) -> Vec<u8> {
        let mut p = vec![first, 0, 0, 0, 1, 8];
        p.extend_from_slice(&dcid);
        p.extend_from_slice(&[0; 40]);
        p
    }

    /// Which member got `datagram`.
    fn receiver(members: &[UdpSocket], client: &UdpSocket, datagram: &[u8]) -> usize {
        client
            .send_to(datagram, members[0].local_addr().expect("address"))
            .expect("send");
        let deadline = std::time::Instant::now() + WAIT;
        let mut buf = [0u8; 128];
        loop {
            for (i, m) in members.iter().enumerate() {
                if let Ok(n) = m.recv(&mut buf) {
                    assert_eq!(&buf[..n], datagram);
                    return i;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no member got the datagram"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn packets_reach_the_seat_their_connection_id_names() {
        let members = group(4);
        attach(members[0].as_fd(), &[3, 0]).expect("attach");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        for seat in [1, 2, 3, 0, 2] {
            assert_eq!(receiver(&members, &client, &short(seat)), seat as usize);
        }
        let handshake = long(0xe0, [0, 1, 9, 9, 9, 9, 9, 9]);
        assert_eq!(receiver(&members, &client, &handshake), 1);
    }

    #[test]
    fn a_seat_past_the_group_or_a_datagram_too_short_is_still_delivered() {
        let members = group(4);
        attach(members[0].as_fd(), &[3]).expect("attach");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        // The kernel's hash picks one; `receiver` fails if none got it.
        receiver(&members, &client, &short(9));
        // Too short for the seat: the out-of-bounds load returns 0.
        assert_eq!(receiver(&members, &client, &[0x40]), 0);
        assert_eq!(receiver(&members, &client, &[0xc0, 0, 0, 0, 1]), 0);
    }

    #[test]
    fn new_connections_go_only_to_the_seats_of_the_table() {
        let members = group(4);
        let table = [3u16, 0];
        attach(members[0].as_fd(), &table).expect("attach");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        for i in 0u32..24 {
            let mut dcid = [0x5a; 8];
            dcid[..4].copy_from_slice(&(i * 7919).to_be_bytes());
            // Initial (0xc0) and 0-RTT (0xd0) of one client go together.
            let expected = table[(i * 7919) as usize % table.len()] as usize;
            assert_eq!(receiver(&members, &client, &long(0xc0, dcid)), expected);
            assert_eq!(receiver(&members, &client, &long(0xd0, dcid)), expected);
        }
    }

    #[test]
    fn a_new_table_replaces_the_old_one_at_once() {
        let members = group(3);
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let initial = long(0xc0, [1, 2, 3, 4, 5, 6, 7, 8]);
        attach(members[0].as_fd(), &[1]).expect("attach");
        assert_eq!(receiver(&members, &client, &initial), 1);
        attach(members[2].as_fd(), &[2]).expect("replace");
        assert_eq!(receiver(&members, &client, &initial), 2);
    }

    #[test]
    fn the_largest_table_is_a_program_the_kernel_takes() {
        let members = group(1);
        let seats: Vec<u16> = (0..MAX_NEW_CONNECTION_SEATS as u16).collect();
        assert!(program(&seats).len() <= libc::BPF_MAXINSNS as usize);
        attach(members[0].as_fd(), &seats).expect("attach");
        // Seats past the most are left out, never a program too long.
        let more = [seats.clone(), vec![1]].concat();
        assert_eq!(program(&seats).len(), program(&more).len());
    }
}
