// A grain whose interface interleaves is shared by the calls beside each other: it must be
// `Sync` (here a `Cell` is not).
use std::cell::Cell;

use grainwire::GrainId;

#[grainwire::grain]
trait Desk {
    #[interleave]
    async fn peek(&self) -> u32;
}

struct DeskState(Cell<u32>);

impl Desk for DeskState {
    async fn peek(&self) -> u32 {
        self.0.get()
    }
}

fn main() {
    let _ = Desk::host(|_: &GrainId| DeskState(Cell::new(0)));
}
