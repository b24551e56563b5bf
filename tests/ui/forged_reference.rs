// A typed reference is made only by grainwire (which checks its interface): neither its field
// nor the proof of the check can be built by hand.
use grainwire::grain::Checked;
use grainwire::{GrainInterface, GrainRef};

#[grainwire::grain]
trait Player {
    async fn name(&self) -> String;
}

#[grainwire::grain]
trait Room {
    async fn size(&self) -> u32;
}

fn forge(room: RoomRef) -> PlayerRef {
    let inner: GrainRef = room.grain_ref().clone();
    PlayerRef::from_checked(Checked(inner))
}

// Even beside the generated types, a room's checked reference is no player's.
fn forge_in_place(room: RoomRef) -> PlayerRef {
    PlayerRef { inner: room.inner }
}

fn main() {}
