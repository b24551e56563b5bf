// A stream's items travel reliably, in order, under flow control, and a stream is never sent
// twice: no other delivery class, no #[idempotent].
#[grainwire::grain]
trait Room {
    #[unreliable]
    async fn events(&self, from: u64) -> grainwire::GrainStream<String>;
    #[idempotent]
    async fn replay(&self) -> grainwire::GrainStream<u64, String>;
}

fn main() {}
