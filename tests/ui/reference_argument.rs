#[grainwire::grain]
trait Player {
    async fn join(&mut self, name: &str) -> u32;
}

fn main() {}
