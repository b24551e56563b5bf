#[grainwire::grain(colour = "red")]
trait Player {
    async fn join(&mut self) -> u32;
}

fn main() {}
