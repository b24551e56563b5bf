#[grainwire::grain]
trait Player {
    async fn join(&mut self) -> u32 {
        1
    }
}

fn main() {}
