#[grainwire::grain]
trait Player {
    async fn join(&mut self, (a, b): (u32, u32)) -> u32;
}

fn main() {}
