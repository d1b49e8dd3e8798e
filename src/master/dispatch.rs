//! Step 1: queued signals and control-socket requests become events for
//! the core (stop, scale, reload, upgrade); `status` and `dump` are
//! answered here.

use std::time::Instant;

use super::control_socket::{ClientId, Revents};
use super::core::{Ask, Event};
use super::forensics::Trigger;
use super::Master;
use crate::proto::control::{Request, Response};
use crate::proto::exit::Exit;

impl Master {
    pub(super) fn dispatch(&mut self, control: &Revents) -> Option<Exit> {
        for (sig, times) in self.signals.take() {
            if let Some(code) = self.step(Event::Signal { sig, times }) {
                return Some(code);
            }
        }
        self.serve_control(control)
    }

    fn serve_control(&mut self, revents: &Revents) -> Option<Exit> {
        let requests = match &mut self.sockets.control {
            Some(control) => control.handle(revents, Instant::now()),
            None => return None,
        };
        for (client, request) in requests {
            let ask = match request {
                Err(e) => {
                    self.reply(client, &Response::error(e.to_string()));
                    continue;
                }
                Ok(Request::Status) => {
                    let mut resp = Response::message("status");
                    resp.status = Some(self.status());
                    self.reply(client, &resp);
                    continue;
                }
                Ok(Request::Dump(slot)) => {
                    self.dump(client, slot);
                    continue;
                }
                Ok(Request::Reload) => Ask::Reload,
                Ok(Request::Scale(n)) => Ask::Scale(n),
                Ok(Request::Stop) => Ask::Stop,
            };
            if let Some(code) = self.step(Event::Control { client, ask }) {
                return Some(code);
            }
        }
        None
    }

    /// `rsvisor dump SLOT`: the stacks and requests in flight of one
    /// worker.
    fn dump(&mut self, client: ClientId, slot: usize) {
        let worker = self
            .fleet
            .workers
            .iter()
            .position(|w| w.slot == slot && !w.leaving());
        match worker {
            Some(i) => self.inspect(i, Trigger::Request, Some(client)),
            None => self.reply(
                client,
                &Response::error(format!(
                    "no worker in slot {slot} (rsvisor status lists them)"
                )),
            ),
        }
    }

    /// Answers a control client (if it is still there).
    pub(super) fn reply(&mut self, to: ClientId, resp: &Response) {
        if let Some(c) = &mut self.sockets.control {
            c.reply(to, resp);
        }
    }
}
