#[grainwire::grain]
trait Player {
    #[id = 7]
    async fn join(&mut self) -> u32;
    #[id = 7]
    async fn leave(&mut self) -> u32;
}

fn main() {}
