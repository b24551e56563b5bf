#[grainwire::grain]
trait Player {
    async fn make(name: String) -> u32;
}

fn main() {}
