//! The seam references call through (`rpc::reference::Calls`): the client's handle, routing a
//! call and handing it to the client's task.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ClientShared;
use super::service::{Again, ClientCmd};
use crate::error::CallError;
use crate::interface::{DeliveryClass, InterfaceInfo, MethodInfo};
use crate::proto::ids::{GrainType, InterfaceId, PeerId};
use crate::proto::route::Target;
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::encode::PREFIX_GAP;
use crate::rpc::encode::Request;
use crate::rpc::reference::{Calls, GrainRef};
use crate::sync::lock;

/// What references call through (`rpc::reference::Calls`): the client's shared state, and its
/// owner, so that a reference keeps its client running.
#[derive(Debug)]
pub(super) struct Handle {
    pub(super) shared: Arc<ClientShared>,
    pub(super) _owner: Owner,
}

#[derive(Debug)]
pub(super) struct Owner(pub(super) Arc<ClientShared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop_tasks();
        // Dropping the endpoint handle shuts its task down (sessions are closed, pending calls
        // fail with `Disconnected`), which drops the service and with it the last `shared`.
        drop(lock(&self.0.endpoint).take());
    }
}

impl Calls for Handle {
    fn default_timeout(&self) -> Duration {
        self.shared.config.default_timeout
    }

    fn max_request(&self, class: DeliveryClass) -> usize {
        max_request(&self.shared.config.transport, class)
    }

    fn cell(&self) -> Arc<CallCell> {
        self.shared.spare_cells.pop().unwrap_or_else(|| Arc::new(CallCell::new()))
    }

    /// Routes the call and hands it to the client's task, the one writer of every grain
    /// stream's frames: calls and one-way calls to a grain leave in the order they were made.
    /// A one-way call holds a pending slot until it is written, the same backpressure as
    /// calls.
    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<Infallible>> {
        let shared = &self.shared;
        let (iface, method) = (request.iface, request.method);
        let target = target_of(iface, method);
        let to = shared.route(&target, r)?;
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.config.max_pending_calls {
            shared.finished_one();
            return Err(CallError::Overloaded);
        }
        let again = Again {
            target,
            hash: r.hash,
            affinity: r.affinity.clone(),
            // An `#[exactly_once]` call is answered from the record if it ran: safe to send
            // again after its server was lost.
            idempotent: method.idempotent || method.exactly_once,
            retry: shared.retry.index(iface.grain_type, method.id),
            delivery: method.delivery,
            inbox: request.stream,
            once: method.exactly_once.then(|| shared.next_call_id.fetch_add(1, Ordering::Relaxed)),
        };
        let (frame, flags, timeout) = (request.frame, request.flags, request.timeout);
        let cmd = ClientCmd::Call { to, frame, flags, stream: r.stream, timeout, kind, again };
        // The receiver lives in the client's task; if it is gone, the client is closed.
        if shared.cmds.send(cmd).is_err() {
            shared.finished_one();
            return Err(CallError::NotConnected);
        }
        shared.wake();
        Ok(())
    }

    fn cancelled(&self, sent: Option<(PeerId, crate::proto::ids::RequestId)>) {
        self.shared.finished_one();
        if let Some((peer, id)) = sent
            && self.shared.cmds.send(ClientCmd::Cancel { peer, id }).is_ok()
        {
            self.shared.wake();
        }
    }

    fn recycle(&self, cell: Arc<CallCell>) {
        let _ = self.shared.spare_cells.push(cell);
    }

    fn stream_window(&self) -> u32 {
        self.shared.config.grain_stream_window
    }

    fn credit(&self, (peer, id): (PeerId, crate::proto::ids::RequestId), more: u32) {
        if self.shared.cmds.send(ClientCmd::Credit { peer, id, more }).is_ok() {
            self.shared.wake();
        }
    }

    fn implements(&self, grain_type: GrainType, interface: InterfaceId) -> Option<bool> {
        if self.shared.starting() {
            return None;
        }
        self.shared.with_routes(|routes| {
            (routes.server_count() > 0).then(|| routes.implements(grain_type, interface))
        })
    }
}

/// The largest request body of `class` over a transport configured as `cfg`: an unreliable
/// one (with its prefix, at most [`PREFIX_GAP`]) must fit one datagram.
pub(crate) fn max_request(cfg: &crate::config::TransportConfig, class: DeliveryClass) -> usize {
    match class.is_unreliable() {
        true => cfg.chunk_size().saturating_sub(PREFIX_GAP),
        false => cfg.max_message_size,
    }
}

/// What a call of `method` of `iface` routes by.
pub(super) fn target_of(iface: &InterfaceInfo, method: &MethodInfo) -> Target {
    Target {
        grain_type: iface.grain_type,
        interface: iface.id,
        version: iface.version,
        method: method.id,
        signature: method.signature,
    }
}
