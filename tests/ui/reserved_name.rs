#[grainwire::grain]
trait Player {
    async fn host(&mut self) -> u32;
}

fn main() {}
