// References are typed: a room is no player.
#[grainwire::grain]
trait Player {
    async fn name(&self) -> String;
}

#[grainwire::grain]
trait Room {
    async fn join(&mut self, player: PlayerRef) -> u32;
}

async fn misuse(room: RoomRef, other: RoomRef) {
    let _ = room.join(other).await;
}

fn main() {}
