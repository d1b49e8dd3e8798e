//! What rsvisor asks of Linux, and the only home of `unsafe` (each block
//! says why it is sound): processes, signals, shared mappings, raw
//! descriptors, epoll sets, the allocator and stack capture, plus the safe plumbing
//! next to them (`/proc`, the pidfile, systemd's protocols). Nothing here
//! knows the rest of the crate.

mod epoll;
mod fds;
mod host;
mod mapping;
mod memory;
pub mod pidfile;
mod process;
pub mod procfs;
mod signals;
mod stacks;
pub mod steering;
pub mod systemd;

pub use epoll::*;
pub use fds::*;
pub use host::*;
pub(crate) use mapping::shared_plain;
pub use mapping::{
    keep_off_disk, keep_out_of_core_dumps, memfd, pack_word, shared_zeroed, unpack_words,
    SharedPlain,
};
pub use memory::*;
pub use process::*;
pub use signals::*;
pub use stacks::*;
