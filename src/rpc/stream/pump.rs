//! The host's half of a stream: its credit and stop, shared with the service ([`StreamCtl`]),
//! and the pump that sends a grain's items under that credit, batched into datagrams, then the
//! end.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;

use super::{Fail, Source};
use crate::proto::ids::RequestId;
use crate::proto::wire::rpc::{self, Status};
use crate::transport::{Connection, Delivery};

/// One stream's state shared between the host's service (which grants its caller's credit
/// and stops it) and its pump.
#[derive(Debug)]
pub(crate) struct StreamCtl {
    /// Items the caller allowed so far, and items sent.
    granted: AtomicU64,
    sent: AtomicU64,
    /// The most items granted and not yet sent (the host's bound on a caller's window).
    cap: u64,
    /// Why it was stopped (`None`: without an answer: its caller gave up or left).
    stop: OnceLock<Option<Status>>,
    waker: AtomicWaker,
    /// Its pump started (the method's turn returned the stream).
    started: std::sync::atomic::AtomicBool,
}

impl StreamCtl {
    /// A stream whose caller takes `window` items first; the host allows at most `cap` ahead.
    pub(crate) fn new(window: u32, cap: u32) -> Self {
        Self {
            granted: AtomicU64::new(window.min(cap).into()),
            sent: AtomicU64::new(0),
            cap: cap.into(),
            stop: OnceLock::new(),
            waker: AtomicWaker::new(),
            started: false.into(),
        }
    }

    /// Its caller takes `more` items (what it grants beyond `cap` ahead is ignored).
    pub(crate) fn grant(&self, more: u32) {
        let sent = self.sent.load(Ordering::Acquire);
        let _ = self.granted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
            Some((g + u64::from(more)).min(sent + self.cap))
        });
        self.waker.wake();
    }

    /// Stops it: with `status` as its end, or (`None`) without one. The first stop wins.
    pub(crate) fn stop(&self, status: Option<Status>) {
        let _ = self.stop.set(status);
        self.waker.wake();
    }

    /// Whether its pump started.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn stopped(&self) -> Option<Option<Status>> {
        self.stop.get().copied()
    }

    fn credit(&self) -> u64 {
        self.granted.load(Ordering::Acquire).saturating_sub(self.sent.load(Ordering::Acquire))
    }
}

/// How a pump ended.
enum End {
    Finished,
    Failed(Fail),
    Panicked,
    TooLarge(usize, usize),
    Stopped(Option<Status>),
    Closed,
}

/// Sends `source`'s items to the caller of call `id` over `conn` on ordered stream `lane`, as
/// `ctl`'s credit allows, batching what is ready into one datagram; then the end. Counts the
/// items sent in `items` as they go; returns how many.
pub(crate) async fn pump(
    ctl: &StreamCtl,
    mut source: Box<dyn Source>,
    conn: &Connection,
    (id, lane): (RequestId, u8),
    items: &AtomicU64,
) -> u64 {
    ctl.started.store(true, Ordering::Release);
    let delivery = Delivery::reliable_ordered(lane);
    // A batch fills one datagram; an item alone may be as large as a message.
    let batch_max = conn.max_single_datagram().saturating_sub(8).max(64);
    let item_max = conn.max_message_size(delivery).saturating_sub(16);
    let mut scratch = Vec::new();
    let mut carry: Option<Vec<u8>> = None;
    let mut sent = 0u64;
    let end = loop {
        let ready = std::future::poll_fn(|cx| {
            if let Some(stop) = ctl.stopped() {
                return Poll::Ready(Err(stop));
            }
            if ctl.credit() > 0 {
                return Poll::Ready(Ok(()));
            }
            ctl.waker.register(cx.waker());
            match (ctl.stopped(), ctl.credit()) {
                (Some(stop), _) => Poll::Ready(Err(stop)),
                (None, 0) => Poll::Pending,
                (None, _) => Poll::Ready(Ok(())),
            }
        })
        .await;
        if let Err(stop) = ready {
            break End::Stopped(stop);
        }
        let credit = ctl.credit();
        let mut frame = Vec::with_capacity(batch_max.min(4096));
        rpc::encode_stream_items_head(&mut frame, id);
        let mut n = 0u64;
        if let Some(item) = carry.take() {
            rpc::put_stream_item(&mut frame, &item);
            n += 1;
        }
        let step = std::future::poll_fn(|cx| {
            loop {
                if let Some(stop) = ctl.stopped() {
                    return Poll::Ready(Some(End::Stopped(stop)));
                }
                if n >= credit || frame.len() >= batch_max {
                    return Poll::Ready(None);
                }
                scratch.clear();
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    source.poll_item(cx, &mut scratch)
                }));
                match polled {
                    Err(_) => return Poll::Ready(Some(End::Panicked)),
                    Ok(Poll::Pending) if n > 0 => return Poll::Ready(None),
                    Ok(Poll::Pending) => {
                        // Woken by the source, or by a stop.
                        ctl.waker.register(cx.waker());
                        if ctl.stopped().is_some() {
                            continue;
                        }
                        return Poll::Pending;
                    }
                    Ok(Poll::Ready(None)) => return Poll::Ready(Some(End::Finished)),
                    Ok(Poll::Ready(Some(Err(fail)))) => {
                        return Poll::Ready(Some(End::Failed(fail)));
                    }
                    Ok(Poll::Ready(Some(Ok(())))) => {}
                }
                if scratch.len() > item_max {
                    return Poll::Ready(Some(End::TooLarge(scratch.len(), item_max)));
                }
                if n > 0 && frame.len() + scratch.len() + 5 > batch_max {
                    carry = Some(scratch.clone());
                    return Poll::Ready(None);
                }
                rpc::put_stream_item(&mut frame, &scratch);
                n += 1;
            }
        })
        .await;
        if n > 0 {
            sent += n;
            ctl.sent.store(sent, Ordering::Release);
            items.fetch_add(n, Ordering::Relaxed);
            if conn.send_wait(delivery, frame).await.is_err() {
                break End::Closed;
            }
        }
        if let Some(end) = step {
            break end;
        }
    };
    let (status, payload) = match end {
        End::Finished => (Status::Ok, postcard::to_allocvec(&sent).unwrap_or_default()),
        End::Failed(Fail::App(error)) => (Status::AppError, error),
        End::Failed(Fail::Encode) => (Status::BadRequest, Vec::new()),
        End::Panicked => {
            tracing::warn!(items = sent, "a grain's stream panicked");
            (Status::HandlerPanicked, Vec::new())
        }
        End::TooLarge(size, max) => {
            let mut payload = Vec::with_capacity(10);
            rpc::encode_too_large(&mut payload, size, max);
            (Status::ResponseTooLarge, payload)
        }
        End::Stopped(Some(status)) => (status, Vec::new()),
        End::Stopped(None) | End::Closed => return sent,
    };
    let mut frame = Vec::with_capacity(8 + payload.len());
    rpc::encode_response(&mut frame, id, status);
    frame.extend_from_slice(&payload);
    let _ = conn.send_wait(delivery, frame).await;
    sent
}
