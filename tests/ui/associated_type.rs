#[grainwire::grain]
trait Player {
    type State;
    async fn join(&mut self) -> u32;
}

fn main() {}
