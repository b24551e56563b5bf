#[grainwire::grain]
trait Player {
    async fn join(&mut self, name: impl Into<String>) -> u32;
}

fn main() {}
