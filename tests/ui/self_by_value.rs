#[grainwire::grain]
trait Player {
    async fn join(self, name: String) -> u32;
}

fn main() {}
