//! The role-neutral half of RPC: what the caller of a grain and its host do, whichever side of
//! a session each is on (a game client calls grains today; a server calling grains, or a
//! client hosting an observer, use the same pieces). After h2's `Peer` and quinn-proto's
//! `Side`: the mechanism lives here once; `client/` and `server/` keep their policies (routing,
//! retries, admission, activation) and use it.
//!
//! * [`dispatch`]: running a call on an object (`Dispatch`, which `#[grain]` implements),
//!   argument decoding, and the one response encoder;
//! * `call`: the cell a pending call completes through, its future, and decoding its outcome;
//! * `encode`: the one request encoder;
//! * `outbound`: the calls a session sent and awaits (ids, deadlines, cancels, resending);
//! * [`context`]: who made the call being run (`caller()`), a task-local set around each call;
//! * [`value`]: references as values (their surrogate on the wire, and what a decoded one is
//!   bound to);
//! * [`stream`]: streams from grains: what a grain returns, the pump that sends its items under
//!   its caller's credit, and what the caller reads;
//! * `turns`: one object's calls one turn at a time (the mailbox between whoever admits calls
//!   and the task that runs them);
//! * [`reference`](mod@reference): grain references (`GrainRef`, what generated references wrap), and the
//!   seam they call through (`Calls`, or an [`Invoker`](reference::Invoker) in tests).
//!
//! `rpc` names `proto`, `interface`, `transport`, `arena`, `error`, `sync`; never `client` or
//! `server`.

pub(crate) mod call;
pub mod context;
pub mod dispatch;
pub(crate) mod encode;
pub(crate) mod outbound;
pub mod reference;
pub mod stream;
pub(crate) mod turns;
pub mod value;
