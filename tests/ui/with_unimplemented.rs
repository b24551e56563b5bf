// `Host::with` serves another interface only for a grain struct that implements it.
use grainwire::GrainId;

#[grainwire::grain]
trait Player {
    async fn name(&self) -> String;
}

#[grainwire::grain(grain_type = "Player")]
trait Inventory {
    async fn items(&self) -> Vec<String>;
}

struct PlayerState;

impl Player for PlayerState {
    async fn name(&self) -> String {
        String::new()
    }
}

fn main() {
    let _ = Player::host(|_: &GrainId| PlayerState).with::<InventoryRef, PlayerState>();
}
